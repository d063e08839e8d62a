// .npy (format 1.0/2.0/3.0) reading and writing for the command-line tool, the tests and programs that embed
// the runtime: C-order float32, float16 and bool arrays, little-endian, which is what numpy.save writes here.
// A .npy file is untrusted input. Its header is validated before anything is allocated, and the data it
// describes must be exactly the bytes left in the file, so memory use is bounded by the file's size. Every
// refusal is a perceiver::InputError naming the file; bytes from the file are escaped in the message.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "perceiver/runtime.hpp"
#include "printable.hpp"

namespace perceiver::npy {

constexpr std::size_t kMaxHeaderBytes = 10000;  // numpy.load's own default limit (max_header_size)
constexpr std::size_t kMaxDims = 64;             // numpy's NPY_MAXDIMS
constexpr std::size_t kMaxPreamble = 12;         // magic, version, header length (4 bytes from version 2.0)

struct Array {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  TensorView view() const { return {dtype, shape, bytes.data()}; }
};

// What a validated header says; data_bytes is what follows data_offset in the file, exactly.
struct Header {
  DType dtype;
  std::vector<int64_t> shape;
  std::size_t data_offset;
  std::uint64_t data_bytes;
};

inline std::string descr_of(DType d) {
  switch (d) {
    case DType::Float32: return "<f4";
    case DType::Float16: return "<f2";
    case DType::Bool: return "|b1";
    default: throw std::runtime_error("npy: bfloat16 has no numpy descr");
  }
}

namespace detail {

[[noreturn]] inline void fail(const std::string& file, const std::string& what) {
  throw InputError(printable(file) + ": " + what);
}

// The header is the Python dict literal numpy writes, {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// padded with spaces: strings, True/False and tuples of integers are all it may hold.
struct Value {
  enum Kind { String, Bool, Tuple } kind;
  std::string_view text;             // as written, for messages
  std::string_view string;           // String: the characters between the quotes
  bool boolean = false;              // Bool
  std::vector<std::string_view> ints;  // Tuple: each element as written ("-1", "320000000")
};

class HeaderParser {
 public:
  HeaderParser(std::string_view header, const std::string& file) : s_(header), file_(file) {}

  std::vector<std::pair<std::string_view, Value>> dict() {
    std::vector<std::pair<std::string_view, Value>> items;
    space();
    expect('{');
    while (space(), peek() != '}') {
      const std::string_view key = quoted();
      space();
      expect(':');
      space();
      items.emplace_back(key, value());
      space();
      if (peek() != ',') break;
      ++i_;
    }
    expect('}');
    space();
    if (i_ != s_.size()) error("bytes after the closing '}'");
    return items;
  }

 private:
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  [[noreturn]] void error(const std::string& what) const {
    fail(file_, "header is not the dict numpy writes: " + what + " at byte " + std::to_string(i_) + " of " +
                    printable(s_, 120));
  }
  void expect(char c) {
    if (peek() != c) error(std::string("expected '") + c + "'");
    ++i_;
  }
  std::string_view quoted() {
    const char q = peek();
    if (q != '\'' && q != '"') error("expected a quoted string");
    const std::size_t end = s_.find(q, i_ + 1);
    if (end == std::string_view::npos) error("unterminated string");
    const std::string_view out = s_.substr(i_ + 1, end - i_ - 1);
    if (out.find('\\') != std::string_view::npos) error("escape sequence in a string");
    i_ = end + 1;
    return out;
  }
  bool word(std::string_view w) {
    if (s_.substr(i_, w.size()) != w) return false;
    i_ += w.size();
    return true;
  }
  std::string_view integer() {
    const std::size_t start = i_;
    if (peek() == '-') ++i_;
    const std::size_t digits = i_;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
    if (i_ == digits) error("expected an integer");
    return s_.substr(start, i_ - start);
  }
  Value value() {
    const std::size_t start = i_;
    Value v{Value::Bool, {}, {}, false, {}};
    if (peek() == '\'' || peek() == '"') {
      v.kind = Value::String;
      v.string = quoted();
    } else if (word("True") || word("False")) {
      v.boolean = s_[start] == 'T';
    } else if (peek() == '(') {
      v.kind = Value::Tuple;
      ++i_;
      bool trailing_comma = false;
      while (space(), peek() != ')') {
        if (v.ints.size() == kMaxDims) fail(file_, "header's shape has more than numpy's " + std::to_string(kMaxDims) + " dimensions");
        v.ints.push_back(integer());
        space();
        trailing_comma = peek() == ',';
        if (!trailing_comma) break;
        ++i_;
      }
      expect(')');
      if (v.ints.size() == 1 && !trailing_comma) error("'(n)' is not a tuple (numpy writes '(n,)')");
    } else {
      error("expected a string, True, False or a tuple");
    }
    v.text = s_.substr(start, i_ - start);
    return v;
  }

  std::string_view s_;
  const std::string& file_;
  std::size_t i_ = 0;
};

inline uint64_t little_endian(std::string_view bytes) {
  uint64_t n = 0;
  for (std::size_t i = bytes.size(); i-- > 0;) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  return n;
}

}  // namespace detail

// Validates the start of a .npy file (prefix: its first bytes, at least kMaxPreamble + kMaxHeaderBytes of them
// when the file is that long) against the file's size; throws InputError naming the file.
inline Header read_header(std::string_view prefix, std::uint64_t file_size, const std::string& file) {
  using detail::fail;
  using detail::Value;
  if (file_size < 10 || prefix.size() < 10)
    fail(file, "not a .npy file (" + std::to_string(file_size) + " bytes, shorter than any .npy header)");
  if (prefix.substr(0, 6) != "\x93NUMPY") fail(file, "not a .npy file (it does not start with \\x93NUMPY)");
  const int major = static_cast<unsigned char>(prefix[6]), minor = static_cast<unsigned char>(prefix[7]);
  if (major < 1 || major > 3 || minor != 0)
    fail(file, "unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor) +
                   " (numpy writes 1.0, 2.0 and 3.0)");
  const std::size_t length_bytes = major == 1 ? 2 : 4;
  if (prefix.size() < 8 + length_bytes) fail(file, "not a .npy file (the header length is cut off)");
  const uint64_t header_len = detail::little_endian(prefix.substr(8, length_bytes));
  const std::size_t offset = 8 + length_bytes;
  if (header_len > kMaxHeaderBytes)
    fail(file, "header of " + std::to_string(header_len) + " bytes is longer than the " + std::to_string(kMaxHeaderBytes) +
                   " numpy.load reads");
  if (offset + header_len > file_size || offset + header_len > prefix.size())
    fail(file, "truncated: the header is " + std::to_string(header_len) + " bytes, " + std::to_string(file_size - offset) +
                   " follow its length field");
  const std::string_view text = prefix.substr(offset, header_len);

  Header h{DType::Float32, {}, offset + static_cast<std::size_t>(header_len), 0};
  const Value* descr = nullptr;
  const Value* fortran = nullptr;
  const Value* shape = nullptr;
  const auto items = detail::HeaderParser(text, file).dict();
  const std::string keys = "numpy writes exactly 'descr', 'fortran_order' and 'shape'";
  for (const auto& [key, value] : items) {
    const Value** slot = key == "descr" ? &descr : key == "fortran_order" ? &fortran : key == "shape" ? &shape : nullptr;
    if (!slot) fail(file, "header has an unexpected key '" + printable(key, 40) + "' (" + keys + ")");
    if (*slot) fail(file, "header repeats the key '" + std::string(key) + "'");
    *slot = &value;
  }
  const std::pair<const char*, const Value*> required[] = {{"descr", descr}, {"fortran_order", fortran}, {"shape", shape}};
  for (const auto& [name, slot] : required)
    if (!slot) fail(file, std::string("header has no '") + name + "' (" + keys + ")");
  if (descr->kind != Value::String) fail(file, "header's 'descr' is not a string: " + printable(descr->text, 60));
  if (fortran->kind != Value::Bool) fail(file, "header's 'fortran_order' is not True or False: " + printable(fortran->text, 60));
  if (shape->kind != Value::Tuple) fail(file, "header's 'shape' is not a tuple: " + printable(shape->text, 60));

  if (descr->string == "<f4") h.dtype = DType::Float32;
  else if (descr->string == "<f2") h.dtype = DType::Float16;
  else if (descr->string == "|b1") h.dtype = DType::Bool;
  else fail(file, "unsupported dtype '" + printable(descr->string, 40) + "' (float32 '<f4', float16 '<f2' or bool '|b1')");
  if (fortran->boolean) fail(file, "Fortran-order arrays are not supported (save a C-order one: numpy.ascontiguousarray)");

  const std::string shape_text = printable(shape->text, 120);
  uint64_t bytes = dtype_size(h.dtype);
  bool overflow = false, empty = false;
  for (const std::string_view d : shape->ints) {
    if (d[0] == '-' && d.find_first_not_of("-0") != std::string_view::npos)
      fail(file, "header's shape " + shape_text + " has a negative dimension, " + printable(d, 40));
    uint64_t n = 0;
    for (const char c : d.substr(d[0] == '-')) {
      if (n > (uint64_t(std::numeric_limits<int64_t>::max()) - (c - '0')) / 10)
        fail(file, "header's shape " + shape_text + " has a dimension beyond 64 bits, " + printable(d, 40));
      n = n * 10 + uint64_t(c - '0');
    }
    h.shape.push_back(static_cast<int64_t>(n));
    empty |= n == 0;
    overflow |= __builtin_mul_overflow(bytes, n, &bytes);
  }
  const uint64_t available = file_size - h.data_offset;
  if (empty) bytes = 0, overflow = false;
  const std::string needs = "the header's shape " + shape_text + " of " + dtype_name(h.dtype) + " needs " +
                            (overflow ? std::string("more than 2^64") : std::to_string(bytes)) + " bytes of data, " +
                            std::to_string(available) + " follow the header";
  if (overflow || bytes > available) fail(file, "truncated: " + needs);
  if (bytes < available) fail(file, std::to_string(available - bytes) + " trailing bytes: " + needs);
  h.data_bytes = bytes;
  return h;
}

// A whole .npy file already in memory (fuzzing, or bytes received over a network).
inline Array parse(std::string_view file_bytes, const std::string& name) {
  Header h = read_header(file_bytes.substr(0, kMaxPreamble + kMaxHeaderBytes), file_bytes.size(), name);
  const std::string_view data = file_bytes.substr(h.data_offset);
  return {h.dtype, std::move(h.shape), std::vector<uint8_t>(data.begin(), data.end())};
}

inline Array load(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (status.type() == fs::file_type::not_found) detail::fail(path, "no such file");
  if (ec) detail::fail(path, "cannot read (" + ec.message() + ")");
  if (!fs::is_regular_file(status)) detail::fail(path, "not a regular file");
  const std::uint64_t size = fs::file_size(path, ec);
  std::ifstream in(path, std::ios::binary);
  if (ec || !in) detail::fail(path, "cannot open");
  std::string prefix(static_cast<std::size_t>(std::min<std::uint64_t>(size, kMaxPreamble + kMaxHeaderBytes)), '\0');
  in.read(prefix.data(), static_cast<std::streamsize>(prefix.size()));
  if (!in) detail::fail(path, "changed while being read");
  Header h = read_header(prefix, size, path);
  Array a{h.dtype, std::move(h.shape), {}};
  a.bytes.resize(h.data_bytes);  // the file's own size, checked above
  in.seekg(static_cast<std::streamoff>(h.data_offset));
  in.read(reinterpret_cast<char*>(a.bytes.data()), static_cast<std::streamsize>(a.bytes.size()));
  if (!in || in.peek() != std::char_traits<char>::eof()) detail::fail(path, "changed while being read");
  return a;
}

inline void save(const std::string& path, DType dtype, const std::vector<int64_t>& shape, const void* data, std::size_t bytes) {
  std::string dims;
  for (std::size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) dims += ",";
  std::string header = "{'descr': '" + descr_of(dtype) + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  const std::size_t unpadded = 10 + header.size() + 1;
  header += std::string((64 - unpadded % 64) % 64, ' ') + "\n";
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    out.write("\x93NUMPY\x01\x00", 8);
    const uint16_t len = static_cast<uint16_t>(header.size());
    const char le[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
    out.write(le, 2);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
    if (!out) throw std::runtime_error(path + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error(path + ": rename failed");
}

}  // namespace perceiver::npy
