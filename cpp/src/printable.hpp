// Bytes from a file a user handed us, made safe to put in an error message: anything that is not printable
// ASCII (control characters, non-UTF-8 bytes, terminal escapes) becomes \xNN, as Python's repr of bytes does.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

namespace perceiver {

// At most max_bytes of s are shown; a longer s ends in "...".
inline std::string printable(std::string_view s, std::size_t max_bytes = std::string_view::npos) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i == max_bytes) return out + "...";
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '\\') {
      out += "\\\\";
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    }
  }
  return out;
}

}  // namespace perceiver
