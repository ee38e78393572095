// The settings text a program hands to gradcomm::check_agreement (include/gradcomm/
// agreement.h): space-separated key=value words, one per setting that shapes the run, so
// that a mismatch names the first differing key with both values on every rank.
#pragma once

#include <concepts>
#include <string>

namespace launch {

// The shortest text that reads back as exactly `x` ("0.1", "1e-05").
std::string shortest(double x);

class SettingsText {
 public:
  // Spaces and '%' in `value` are escaped (%20, %25): a path with spaces stays one word.
  SettingsText& add(const std::string& key, const std::string& value);
  SettingsText& add(const std::string& key, const char* value) { return add(key, std::string(value)); }
  SettingsText& add(const std::string& key, double value) { return add(key, shortest(value)); }
  template <std::integral T>
  SettingsText& add(const std::string& key, T value) {
    return add(key, std::to_string(value));
  }
  const std::string& text() const noexcept { return text_; }

 private:
  std::string text_;
};

}  // namespace launch
