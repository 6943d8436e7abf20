/* Human-readable names for ek_status, for error messages built by callers. */
#include "edgekern.h"

const char *ek_status_str(ek_status status) {
    switch (status) {
    case EK_OK: return "ok";
    case EK_ERR_INVALID_ARG: return "invalid argument";
    case EK_ERR_UNSUPPORTED: return "unsupported type or operation";
    case EK_ERR_NO_MEMORY: return "out of memory";
    case EK_ERR_ISA_UNAVAILABLE: return "instruction set not available on this CPU";
    case EK_ERR_THREADS: return "could not start worker threads";
    case EK_ERR_CONTEXT_FULL: return "KV cache is full";
    case EK_ERR_INTERNAL: return "internal error";
    case EK_ERR_CANCELLED: return "cancelled";
    case EK_ERR_NON_FINITE: return "a value is NaN or infinite";
    }
    return "unknown status";
}
