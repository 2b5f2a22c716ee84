// Argument checks whose messages name the op, the argument and what was seen.
#pragma once

#include <torch/types.h>

#define PYVLMX_CHECK_DEFINED(op, t)                                              \
  TORCH_CHECK_VALUE((t).defined(), op ": ", #t " must be a defined tensor")

#define PYVLMX_CHECK_DIM(op, t, d)                                               \
  TORCH_CHECK_VALUE((t).dim() == (d), op ": ", #t " must have ", d,            \
                    " dimensions, got shape ", (t).sizes())

#define PYVLMX_CHECK_FLOATING(op, t)                                             \
  TORCH_CHECK_TYPE(at::isFloatingType((t).scalar_type()), op ": ", #t,          \
                   " must be a floating-point tensor, got ", (t).scalar_type())

#define PYVLMX_CHECK_SAME_SHAPE(op, a, b)                                        \
  TORCH_CHECK_VALUE((a).sizes() == (b).sizes(), op ": ", #a " and " #b,        \
                    " must have the same shape, got ", (a).sizes(), " and ",     \
                    (b).sizes())

#define PYVLMX_CHECK_SAME_DTYPE(op, a, b)                                        \
  TORCH_CHECK_TYPE((a).scalar_type() == (b).scalar_type(), op ": ", #a " and " \
                   #b, " must have the same dtype, got ", (a).scalar_type(),   \
                   " and ", (b).scalar_type())

#define PYVLMX_CHECK_SAME_DEVICE(op, a, b)                                       \
  TORCH_CHECK_VALUE((a).device() == (b).device(), op ": ", #a " and " #b,      \
                    " must be on the same device, got ", (a).device(), " and ", \
                    (b).device())

#define PYVLMX_CHECK_CPU(op, t)                                                  \
  TORCH_CHECK_VALUE((t).device().is_cpu(), op ": ", #t,                         \
                    " must be a CPU tensor here, got ", (t).device())

#define PYVLMX_CHECK_CUDA(op, t)                                                 \
  TORCH_CHECK_VALUE((t).device().is_cuda(), op ": ", #t,                        \
                    " must be a CUDA tensor here, got ", (t).device())
