/* Status names, the ABI version, and what the CUDA runtime says about the devices. */
#include "internal.cuh"

#include <stdio.h>
#include <stdlib.h>

const char *ec_status_str(int status) {
    if (status >= EC_ERR_CUDA_BASE) return cudaGetErrorString((cudaError_t)(status - EC_ERR_CUDA_BASE));
    return ek_status_str((ek_status)status);
}

int ec_abi_version(void) { return EC_ABI_VERSION; }

size_t ec_struct_size(int which) {
    switch (which) {
    case EK_STRUCT_TENSOR_DESC: return sizeof(ek_tensor_desc);
    case EK_STRUCT_MODEL_DESC: return sizeof(ek_model_desc);
    default: return 0;
    }
}

int ec_device_count(int *cuda_error) {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (cuda_error) *cuda_error = (int)err;
    return err == cudaSuccess ? count : 0;
}

/* Compiled like every kernel of the library: whether it has an image for a device says the same for all. */
__global__ void ec_probe_kernel(void) {}

int ec_device_supported(int device) {
    EC_TRY(cudaSetDevice(device));
    cudaFuncAttributes attr;
    EC_TRY(cudaFuncGetAttributes(&attr, ec_probe_kernel));
    return EK_OK;
}

int ec_device_props_get(int device, ec_device_props *out) {
    memset(out, 0, sizeof *out);
    cudaDeviceProp p;
    EC_TRY(cudaGetDeviceProperties(&p, device));
    snprintf(out->name, sizeof out->name, "%s", p.name);
    out->total_bytes = p.totalGlobalMem;
    out->cc_major = p.major, out->cc_minor = p.minor;
    out->integrated = p.integrated;
    out->multiprocessors = p.multiProcessorCount;
    EC_TRY(cudaDriverGetVersion(&out->driver_version));
    EC_TRY(cudaRuntimeGetVersion(&out->runtime_version));
    size_t free_bytes = 0, total = 0;
    EC_TRY(cudaSetDevice(device));
    EC_TRY(cudaMemGetInfo(&free_bytes, &total));
    out->free_bytes = free_bytes;
    return EK_OK;
}
