/* The Python module shell around the native library.
 *
 * native/ has no Python in it; this file exists only so that setuptools can
 * build native/src/ into a file pip installs with the package. The module
 * itself is empty: edgesdk/_native.py loads the same file with ctypes and calls
 * the C API of native/include/edgekern.h.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef edgekern_module = {
    PyModuleDef_HEAD_INIT, "_edgekern",
    "edgesdk's native kernel library (used through ctypes by edgesdk._native).", -1, NULL,
};

PyMODINIT_FUNC PyInit__edgekern(void) { return PyModule_Create(&edgekern_module); }
