#include "launch/settings.h"

#include "gradcomm/error.h"

namespace launch {

std::string shortest(double x) { return gradcomm::detail::shortest(x); }

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
