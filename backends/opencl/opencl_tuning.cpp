// Kernel parameter databases of the opencl backend: see opencl_tuning.h.
#include "backends/opencl/opencl_tuning.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>
#include <vector>

namespace anvil::opencl {
namespace {

std::string trim(std::string_view s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return "";
  const auto last = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(first, last - first + 1));
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::vector<std::string> words(std::string_view s) {
  std::vector<std::string> out;
  std::istringstream in{std::string(s)};
  std::string w;
  while (in >> w) out.push_back(w);
  return out;
}

// "<family> [conditions] : params" -> parts; false when there is no ':'.
bool split_line(const std::string& line, std::vector<std::string>* head, std::string* params) {
  const std::string body = trim(line.substr(0, line.find('#')));
  if (body.empty()) return false;
  const auto colon = body.find(':');
  if (colon == std::string::npos) return false;
  *head = words(body.substr(0, colon));
  *params = body.substr(colon + 1);
  return !head->empty();
}

// Number of conditions that hold, or -1 if one fails.
int match_score(const std::vector<std::string>& conditions, const DeviceInfo& info) {
  int score = 0;
  for (const std::string& c : conditions) {
    const auto eq = c.find('=');
    if (eq == std::string::npos) return -1;
    const std::string key = c.substr(0, eq);
    std::string value = lower(c.substr(eq + 1));
    for (char& ch : value)
      if (ch == '_') ch = ' ';
    bool ok = false;
    if (key == "type") ok = value == info.type_name();
    else if (key == "vendor") ok = lower(info.vendor + " " + info.platform_name).find(value) != std::string::npos;
    else if (key == "name") ok = lower(info.name).find(value) != std::string::npos;
    else if (key == "vector") ok = value == std::to_string(info.preferred_vector_width_float);
    if (!ok) return -1;
    ++score;
  }
  return score;
}

bool tuning_disabled() {
  const char* v = std::getenv("ANVIL_OPENCL_TUNING");
  return v && std::string(v) == "0";
}

const char* kDeviceHeader = "# device: ";

// The tuned lines of a device's file, after the safety and identity checks.
std::vector<std::string> tuned_lines(const std::string& path, const DeviceInfo& info, std::string* why) {
  std::vector<std::string> lines;
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return lines;  // no file: nothing tuned
  if (!S_ISREG(st.st_mode) || st.st_uid != ::geteuid() || (st.st_mode & (S_IWGRP | S_IWOTH))) {
    *why = path + ": not a private regular file of this user; ignored";
    return lines;
  }
  std::ifstream in(path);
  std::string line;
  bool identified = false;
  while (std::getline(in, line)) {
    if (line.rfind(kDeviceHeader, 0) == 0) identified = line.substr(std::string(kDeviceHeader).size()) == info.key();
    else lines.push_back(line);
  }
  if (!identified) {
    *why = path + ": made for another device or driver; ignored";
    lines.clear();
  }
  return lines;
}

}  // namespace

std::string format_params(const Params& params) {
  std::string out;
  for (const auto& [k, v] : params) out += (out.empty() ? "" : " ") + k + "=" + std::to_string(v);
  return out;
}

Status parse_params(std::string_view text, Params* out) {
  Params params;
  for (std::string w : words(text)) {
    for (char& c : w)
      if (c == ',') c = ' ';
    for (const std::string& token : words(w)) {
      const auto eq = token.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == token.size())
        return invalid_argument("parameter '" + token + "' is not NAME=INTEGER");
      const std::string name = token.substr(0, eq), value = token.substr(eq + 1);
      for (char c : name)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_')
          return invalid_argument("parameter name '" + name + "' is not an identifier");
      char* end = nullptr;
      const long long v = std::strtoll(value.c_str(), &end, 10);
      if (!end || *end != '\0') return invalid_argument("parameter '" + token + "' has a non-integer value");
      params[name] = v;
    }
  }
  *out = std::move(params);
  return Status::Ok();
}

std::string tuning_file(int device) {
  const DeviceInfo* info = nullptr;
  if (!device_info(device, &info).ok()) return "";
  const std::string root = user_cache_root();
  if (root.empty()) return "";
  const std::string dir = root + "/tuning";
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return "";
  char name[32];
  std::snprintf(name, sizeof name, "%016llx.txt", static_cast<unsigned long long>(hash64(info->key())));
  return dir + "/" + name;
}

ParamsLookup lookup_params(int device, const std::string& family) {
  ParamsLookup result{{}, "none"};
  const DeviceInfo* info = nullptr;
  if (!device_info(device, &info).ok()) return result;
  std::vector<std::string> head;
  std::string params_text;
  if (!tuning_disabled()) {
    const std::string path = tuning_file(device);
    std::string why;
    if (!path.empty())
      for (const std::string& line : tuned_lines(path, *info, &why))
        if (split_line(line, &head, &params_text) && head.size() == 1 && head[0] == family) {
          Params p;
          if (parse_params(params_text, &p).ok()) {
            result = {p, "tuned (" + path + ")"};
          } else {
            why = path + ": unparsable entry '" + trim(line) + "'; ignored";
          }
        }
    if (!why.empty() && std::getenv("ANVIL_LOG")) std::fprintf(stderr, "anvil: opencl tuning: %s\n", why.c_str());
    if (!result.params.empty()) return result;
  }
  const char* text = embedded_source("opencl_tuning_defaults");
  if (!text) return result;
  std::istringstream in(text);
  std::string line;
  int best = -1;
  while (std::getline(in, line)) {
    if (!split_line(line, &head, &params_text) || head[0] != family) continue;
    const int score = match_score({head.begin() + 1, head.end()}, *info);
    Params p;
    if (score > best && parse_params(params_text, &p).ok()) {
      best = score;
      result = {p, "default (" + trim(line) + ")"};
    }
  }
  return result;
}

Status store_params(int device, const std::string& family, const Params& params, const std::string& note) {
  const DeviceInfo* info = nullptr;
  ANVIL_RETURN_IF_ERROR(device_info(device, &info));
  const std::string path = tuning_file(device);
  if (path.empty()) return {StatusCode::runtime_error, "opencl tuning: no usable cache folder to store results in"};
  std::string why;
  std::vector<std::string> keep;
  std::vector<std::string> head;
  std::string params_text;
  for (const std::string& line : tuned_lines(path, *info, &why)) {
    const bool same = split_line(line, &head, &params_text) && head.size() == 1 && head[0] == family;
    const bool our_note = trim(line).rfind("# " + family + ":", 0) == 0;
    if (!same && !our_note) keep.push_back(line);
  }
  std::string content = std::string(kDeviceHeader) + info->key() + "\n";
  for (const std::string& line : keep) content += line + "\n";
  if (!note.empty()) content += "# " + family + ": " + note + "\n";
  content += family + " : " + format_params(params) + "\n";
  static std::atomic<int> counter{0};
  const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return {StatusCode::runtime_error, "opencl tuning: cannot create " + tmp};
  const bool written = ::write(fd, content.data(), content.size()) == ssize_t(content.size());
  if (::close(fd) != 0 || !written || ::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return {StatusCode::runtime_error, "opencl tuning: cannot write " + path};
  }
  return Status::Ok();
}

}  // namespace anvil::opencl
