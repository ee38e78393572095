#include "launch/settings.h"

#include <charconv>

namespace launch {

std::string shortest(double x) {
  char buf[64];
  const auto end = std::to_chars(buf, buf + sizeof buf, x).ptr;
  return std::string(buf, end);
}

SettingsText& SettingsText::add(const std::string& key, const std::string& value) {
  if (!text_.empty()) text_ += ' ';
  text_ += key;
  text_ += '=';
  for (const char c : value) {
    if (c == ' ') text_ += "%20";
    else if (c == '%') text_ += "%25";
    else text_ += c;
  }
  return *this;
}

}  // namespace launch
