/* Helpers shared by ops.c and the engine files; not part of the public API. */
#ifndef EK_OPS_INTERNAL_H
#define EK_OPS_INTERNAL_H

#include <stdint.h>

float ops_half_to_float(uint16_t h);
uint16_t ops_float_to_half(float f);

#endif
