// Every commcomp operator schema, declared once. Backends register implementations in their own
// TORCH_LIBRARY_IMPL blocks (cpu/*.cpp, cuda/*_binding.cpp); fake (meta) implementations live in
// commcomp/ops.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing commcomp._C runs the static registrations below; the module itself has no members.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(commcomp, m) {
  // Core quantization (csrc/core/quantize.h, bitpack.h, philox.h).
  m.def("bucket_norms(Tensor x, int bucket_size, str norm) -> Tensor");
  m.def(
      "quantize(Tensor x, Tensor levels, int bucket_size, str norm, int seed, int offset,"
      " Tensor? norms=None, bool allow_nonfinite=False, int stream_index=0) -> (Tensor, Tensor)");
  m.def(
      "dequantize(Tensor norms, Tensor symbols, Tensor levels, int bucket_size, int numel)"
      " -> Tensor");
  m.def(
      "dequantize_accumulate(Tensor(a!) out, Tensor[] norms, Tensor[] symbols, Tensor levels,"
      " int bucket_size, float scale) -> ()");
  m.def("pack_symbols(Tensor symbols, int width) -> Tensor");
  m.def("unpack_symbols(Tensor packed, int width, int numel) -> Tensor");
  // Wire codecs (csrc/core/elias.h).
  // Elias coding of packed symbols: per-bucket byte lengths (int64) and the concatenated stream.
  m.def(
      "elias_encode(Tensor packed, int num_levels, int bucket_size, int numel, int code)"
      " -> (Tensor, Tensor)");
  m.def(
      "elias_decode(Tensor bucket_bytes, Tensor stream, int num_levels, int bucket_size,"
      " int numel, int code) -> Tensor");
  // Payloads of the wire format (csrc/core/wire.h; one implementation for every device:
  // csrc/composite/payload.cpp). The header comes back as int64[10]: coding, levels kind,
  // levels, bits, dtype, length bytes, bucket size, numel, stream bytes, level CRC.
  m.def("read_payload_header(Tensor payload) -> Tensor");
  // numel / bucket_size of -1 and levels=None: no expectation. Returns (header, levels float32
  // (host), norms float32, packed symbols uint8), the last two on the payload's device.
  m.def(
      "decode_payload(Tensor payload, int max_numel, int numel, int bucket_size, Tensor? levels)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
  // Adaptive-level statistics (csrc/core/stats.h).
  m.def("level_stats(Tensor x, Tensor norms, int bucket_size, int bins) -> Tensor");
  // Diagnostics (csrc/cpu/simd): the CPU kernel paths this machine supports, scalar first.
  m.def("_cpu_paths() -> str[]");
}
