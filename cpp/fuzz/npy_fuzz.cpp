// libFuzzer target: any bytes, read as a .npy file, give an array whose data is exactly the bytes after the header,
// or perceiver::InputError. Anything else (another exception, a crash, a leak, an allocation beyond
// -malloc_limit_mb, a sanitizer report) is a finding.
#include <cstdint>
#include <string_view>

#include "../src/npy.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const std::string_view file(reinterpret_cast<const char*>(data), size);
  try {
    const auto array = perceiver::npy::parse(file, "fuzz.npy");
    uint64_t bytes = perceiver::dtype_size(array.dtype);
    for (int64_t d : array.shape) bytes *= static_cast<uint64_t>(d);  // fits: it was checked against the file
    if (array.bytes.size() != bytes || array.bytes.size() >= size) __builtin_trap();
  } catch (const perceiver::InputError&) {
  }
  return 0;
}
