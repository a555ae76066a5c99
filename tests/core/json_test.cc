#include "core/json.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace eplb {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

JsonValue ParseOk(const std::string& text) {
  absl::StatusOr<JsonValue> value = ParseJson(text);
  EXPECT_TRUE(value.ok()) << text << ": " << value.status();
  return value.ok() ? *std::move(value) : JsonValue();
}

// The error message of parsing `text`, which must fail with INVALID_ARGUMENT.
std::string ParseError(const std::string& text) {
  absl::StatusOr<JsonValue> value = ParseJson(text);
  if (value.ok()) {
    ADD_FAILURE() << "parsed: " << text;
    return "";
  }
  EXPECT_EQ(value.status().code(), absl::StatusCode::kInvalidArgument) << value.status();
  return std::string(value.status().message());
}

TEST(JsonParseTest, Literals) {
  EXPECT_TRUE(ParseOk("null").is_null());
  EXPECT_TRUE(ParseOk("true").bool_value());
  EXPECT_FALSE(ParseOk("false").bool_value());
  EXPECT_EQ(ParseOk("  \t\r\n true \n").type(), JsonValue::Type::kBool);
}

TEST(JsonParseTest, IntegerLiteralsKeepExactInt64) {
  const JsonValue zero = ParseOk("0");
  EXPECT_TRUE(zero.is_integer());
  EXPECT_EQ(zero.int_value(), 0);
  EXPECT_EQ(ParseOk("-0").int_value(), 0);
  EXPECT_EQ(ParseOk("42").int_value(), 42);
  EXPECT_EQ(ParseOk("-17").int_value(), -17);
  EXPECT_EQ(ParseOk("999999999999999999").int_value(), 999999999999999999);
  EXPECT_EQ(ParseOk("9223372036854775807").int_value(), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(ParseOk("-9223372036854775808").int_value(), std::numeric_limits<int64_t>::min());
  // 2^53 + 1 has no double, but its int64 is exact.
  const JsonValue big = ParseOk("9007199254740993");
  EXPECT_EQ(big.int_value(), 9007199254740993);
  EXPECT_EQ(big.number_value(), 9007199254740992.0);
}

TEST(JsonParseTest, IntegerBeyondInt64IsADouble) {
  const JsonValue v = ParseOk("9223372036854775808");
  EXPECT_TRUE(v.is_number());
  EXPECT_FALSE(v.is_integer());
  EXPECT_EQ(v.number_value(), 9223372036854775808.0);
  EXPECT_EQ(ParseOk("-123456789012345678901234567890").number_value(),
            -123456789012345678901234567890.0);
}

TEST(JsonParseTest, FractionsAndExponentsAreNotIntegers) {
  for (const char* text : {"1.5", "1e3", "1E3", "1.0", "-2.5e-3", "1e+2", "0.0"}) {
    const JsonValue v = ParseOk(text);
    EXPECT_TRUE(v.is_number()) << text;
    EXPECT_FALSE(v.is_integer()) << text;
  }
  EXPECT_EQ(ParseOk("1.5").number_value(), 1.5);
  EXPECT_EQ(ParseOk("1e3").number_value(), 1000.0);
  EXPECT_EQ(ParseOk("-2.5e-3").number_value(), -0.0025);
  EXPECT_EQ(ParseOk("0.1").number_value(), 0.1);
  EXPECT_EQ(ParseOk("5e-324").number_value(), std::numeric_limits<double>::denorm_min());
  EXPECT_EQ(ParseOk("1.7976931348623157e308").number_value(), std::numeric_limits<double>::max());
}

TEST(JsonParseTest, RefusesNumbersBeyondADouble) {
  for (const char* text : {"1e999", "-1e999", "123.456e99999999999999999999", "1.8e308",
                           "0.0000001e-999", "-1e-999", "1e-400", "0e999999"}) {
    EXPECT_EQ(ParseError(text), "line 1, column 1: number out of the range of a double") << text;
  }
  EXPECT_EQ(ParseError("[1, 2e400]"), "line 1, column 5: number out of the range of a double");
  EXPECT_EQ(ParseError(std::string(400, '9')),
            "line 1, column 1: number out of the range of a double");
  // The smallest subnormal and the largest double are in range.
  EXPECT_EQ(ParseOk("4.9e-324").number_value(), std::numeric_limits<double>::denorm_min());
  EXPECT_EQ(ParseOk("-1.7976931348623157e308").number_value(),
            std::numeric_limits<double>::lowest());
}

// Exponents and fraction lengths whose sum does not fit in an int (the reader's counters) still
// give the right value or a clean error.
TEST(JsonParseTest, ExtremeExponentsAndLongFractions) {
  EXPECT_EQ(ParseError("1e-2147483649"), "line 1, column 1: number out of the range of a double");
  EXPECT_EQ(ParseError("0." + std::string(100, '0') + "1e-2147483647"),
            "line 1, column 1: number out of the range of a double");
  EXPECT_EQ(ParseOk("0." + std::string(100000, '0') + "1e100000").number_value(), 0.1);
  EXPECT_EQ(ParseOk("1." + std::string(100000, '0') + "1").number_value(), 1.0);
  EXPECT_EQ(ParseOk("0e-99999999999999999999").number_value(), 0.0);
}

TEST(JsonParseTest, RefusesTextsLongerThanTheLimit) {
  const std::string text(kMaxJsonBytes + 1, ' ');
  EXPECT_EQ(ParseError(text), "the JSON text is 209715201 bytes; at most 209715200 are read");
}

TEST(JsonParseTest, StringEscapes) {
  EXPECT_EQ(ParseOk(R"("plain")").string_value(), "plain");
  EXPECT_EQ(ParseOk(R"("")").string_value(), "");
  EXPECT_EQ(ParseOk(R"("\" \\ \/ \b \f \n \r \t")").string_value(), "\" \\ / \b \f \n \r \t");
  EXPECT_EQ(ParseOk(R"("\u0041\u00e9\u20AC")").string_value(), "A\xC3\xA9\xE2\x82\xAC");
  EXPECT_EQ(ParseOk(R"("\ud83d\ude00")").string_value(), "\xF0\x9F\x98\x80");  // U+1F600
  EXPECT_EQ(ParseOk(R"("\uDBFF\uDFFF")").string_value(), "\xF4\x8F\xBF\xBF");  // U+10FFFF
  EXPECT_EQ(ParseOk(R"("a\u0000b")").string_value(), std::string("a\0b", 3));
  // Raw UTF-8 passes through.
  EXPECT_EQ(ParseOk("\"caf\xC3\xA9 \xF0\x9F\x98\x80\"").string_value(),
            "caf\xC3\xA9 \xF0\x9F\x98\x80");
}

TEST(JsonParseTest, ArraysAndObjectsKeepOrder) {
  const JsonValue v = ParseOk(R"( {"z": [1, 2.5, "x", null, [], {}], "a": {"k": true}, "m": 0} )");
  ASSERT_TRUE(v.is_object());
  const JsonValue::Object& members = v.object_members();
  ASSERT_EQ(members.size(), 3u);
  EXPECT_EQ(members[0].first, "z");
  EXPECT_EQ(members[1].first, "a");
  EXPECT_EQ(members[2].first, "m");
  const JsonValue::Array& z = v.Find("z")->array_items();
  ASSERT_EQ(z.size(), 6u);
  EXPECT_EQ(z[0].int_value(), 1);
  EXPECT_EQ(z[1].number_value(), 2.5);
  EXPECT_EQ(z[2].string_value(), "x");
  EXPECT_TRUE(z[3].is_null());
  EXPECT_TRUE(z[4].array_items().empty());
  EXPECT_TRUE(z[5].object_members().empty());
  EXPECT_TRUE(v.Find("a")->Find("k")->bool_value());
  EXPECT_EQ(v.Find("missing"), nullptr);
  EXPECT_EQ(z[0].Find("z"), nullptr);  // not an object
}

TEST(JsonParseTest, SyntaxErrorsNameLineAndColumn) {
  EXPECT_EQ(ParseError(""), "line 1, column 1: expected a value");
  EXPECT_EQ(ParseError("   "), "line 1, column 4: expected a value");
  EXPECT_EQ(ParseError("[1, 2"), "line 1, column 6: expected ',' or ']'");
  EXPECT_EQ(ParseError("{\n  \"a\": 1,\n  \"b\": [1 2]\n}"),
            "line 3, column 11: expected ',' or ']'");
  EXPECT_EQ(ParseError("{\r\n\"a\" 1}"), "line 2, column 5: expected ':'");
  EXPECT_EQ(ParseError(R"({"a": 1 "b": 2})"), "line 1, column 9: expected ',' or '}'");
  EXPECT_EQ(ParseError("{1: 2}"), "line 1, column 2: expected an object key (a string)");
  EXPECT_EQ(ParseError(R"({"a": 1,})"), "line 1, column 9: expected an object key (a string)");
  EXPECT_EQ(ParseError("[1,]"), "line 1, column 4: expected a value");
  EXPECT_EQ(ParseError("[1, "), "line 1, column 5: expected a value");  // truncated
  EXPECT_EQ(ParseError("[,1]"), "line 1, column 2: expected a value");
  EXPECT_EQ(ParseError("tru"), "line 1, column 1: expected a value");
  EXPECT_EQ(ParseError("nul"), "line 1, column 1: expected a value");
  EXPECT_EQ(ParseError("NaN"), "line 1, column 1: expected a value");
  EXPECT_EQ(ParseError("[Infinity]"), "line 1, column 2: expected a value");
  EXPECT_EQ(ParseError("'a'"), "line 1, column 1: expected a value");
  EXPECT_EQ(ParseError("\xEF\xBB\xBF{}"), "line 1, column 1: expected a value");  // BOM
}

TEST(JsonParseTest, RejectsTrailingCharacters) {
  EXPECT_EQ(ParseError("[1] x"), "line 1, column 5: unexpected characters after the JSON value");
  EXPECT_EQ(ParseError("{}{}"), "line 1, column 3: unexpected characters after the JSON value");
  EXPECT_EQ(ParseError("1 2"), "line 1, column 3: unexpected characters after the JSON value");
  EXPECT_EQ(ParseError("truex"), "line 1, column 5: unexpected characters after the JSON value");
  EXPECT_EQ(ParseError(std::string("null\n\0", 6)),
            "line 2, column 1: unexpected characters after the JSON value");
}

TEST(JsonParseTest, RejectsBadNumbers) {
  EXPECT_EQ(ParseError("01"), "line 1, column 1: invalid number: leading zero");
  EXPECT_EQ(ParseError("[-01]"), "line 1, column 2: invalid number: leading zero");
  EXPECT_EQ(ParseError("-"), "line 1, column 1: invalid number");
  EXPECT_EQ(ParseError("-a"), "line 1, column 1: invalid number");
  EXPECT_EQ(ParseError("1."), "line 1, column 1: invalid number: no digit after '.'");
  EXPECT_EQ(ParseError("1.e5"), "line 1, column 1: invalid number: no digit after '.'");
  EXPECT_EQ(ParseError("1e"), "line 1, column 1: invalid number: no digit in exponent");
  EXPECT_EQ(ParseError("1e+"), "line 1, column 1: invalid number: no digit in exponent");
  EXPECT_EQ(ParseError(".5"), "line 1, column 1: expected a value");
  EXPECT_EQ(ParseError("+1"), "line 1, column 1: expected a value");
  EXPECT_EQ(ParseError("0x10"), "line 1, column 2: unexpected characters after the JSON value");
}

TEST(JsonParseTest, RejectsBadStrings) {
  EXPECT_EQ(ParseError(R"("abc)"), "line 1, column 1: unterminated string");
  EXPECT_EQ(ParseError(R"(["abc\)"), "line 1, column 2: unterminated string");
  EXPECT_EQ(ParseError("\"a\nb\""),
            "line 1, column 3: unescaped control character U+000A in a string");
  EXPECT_EQ(ParseError("\"a\tb\""),
            "line 1, column 3: unescaped control character U+0009 in a string");
  EXPECT_EQ(ParseError(R"("\x")"), "line 1, column 2: invalid escape sequence in a string");
  EXPECT_EQ(ParseError(R"("\U0041")"), "line 1, column 2: invalid escape sequence in a string");
  EXPECT_EQ(ParseError(R"("\u12")"), "line 1, column 2: invalid \\u escape: expected 4 hex digits");
  EXPECT_EQ(ParseError(R"("\u12g4")"),
            "line 1, column 2: invalid \\u escape: expected 4 hex digits");
  EXPECT_EQ(ParseError(R"("\ud800")"),
            "line 1, column 2: invalid \\u escape: high surrogate not followed by a low surrogate");
  EXPECT_EQ(ParseError(R"("\ud800\u0041")"),
            "line 1, column 2: invalid \\u escape: high surrogate not followed by a low surrogate");
  EXPECT_EQ(ParseError(R"("x\ud800\ud800")"),
            "line 1, column 3: invalid \\u escape: high surrogate not followed by a low surrogate");
  EXPECT_EQ(ParseError(R"("\udc00")"),
            "line 1, column 1: invalid \\u escape: unpaired low surrogate");
  EXPECT_EQ(ParseError(R"({"k": "ab", "\uDFFF": 1})"),
            "line 1, column 13: invalid \\u escape: unpaired low surrogate");
}

TEST(JsonParseTest, RejectsInvalidUtf8InStrings) {
  for (const char* bad : {
           "\"\xFF\"",              // never valid
           "\"\x80\"",              // lone continuation byte
           "\"\xC3\"",              // truncated
           "\"\xC0\xAF\"",          // overlong '/'
           "\"\xE0\x80\xAF\"",      // overlong
           "\"\xED\xA0\x80\"",      // UTF-8 encoded surrogate U+D800
           "\"\xF4\x90\x80\x80\"",  // above U+10FFFF
           "\"\xF0\x9F\x98\"",      // truncated 4-byte sequence
       }) {
    EXPECT_EQ(ParseError(bad), "line 1, column 2: invalid UTF-8 in a string") << bad;
  }
  EXPECT_EQ(ParseError("{\"k\xFF\": 1}"), "line 1, column 4: invalid UTF-8 in a string");
}

TEST(JsonParseTest, RejectsDuplicateKeysNamingThem) {
  EXPECT_EQ(ParseError(R"({"a":1,"a":2})"), "line 1, column 8: duplicate object key \"a\"");
  EXPECT_EQ(ParseError("{\"x\": {\"b\": 1,\n \"q\\\"\": 2, \"q\\\"\": 3}}"),
            "line 2, column 12: duplicate object key \"q\\\"\"");
  // Same keys in different objects are fine.
  EXPECT_TRUE(ParseJson(R"({"a": {"a": 1}, "b": {"a": 2}})").ok());
  // Escapes are compared after decoding.
  EXPECT_EQ(ParseError(R"({"a": 1, "\u0061": 2})"),
            "line 1, column 10: duplicate object key \"a\"");
}

TEST(JsonParseTest, RejectsDuplicateKeysInLargeObjects) {
  std::string text = "{";
  for (int i = 0; i < 1000; ++i)
    text += "\"k" + std::to_string(i) + "\": " + std::to_string(i) + ", ";
  const size_t duplicate_column = text.size() + 1;
  text += "\"k500\": 0}";
  EXPECT_EQ(ParseError(text), "line 1, column " + std::to_string(duplicate_column) +
                                  ": duplicate object key \"k500\"");
  text.resize(duplicate_column - 1);
  text += "\"k1000\": 0}";
  const JsonValue v = ParseOk(text);
  EXPECT_EQ(v.object_members().size(), 1001u);
  EXPECT_EQ(v.Find("k999")->int_value(), 999);
}

TEST(JsonParseTest, LimitsNestingDepth) {
  const std::string ok = std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']');
  EXPECT_TRUE(ParseJson(ok).ok());
  const std::string deep =
      std::string(kMaxJsonDepth + 1, '[') + std::string(kMaxJsonDepth + 1, ']');
  EXPECT_EQ(ParseError(deep),
            "line 1, column 129: arrays and objects nested deeper than 128 levels");
  std::string objects;
  for (int i = 0; i <= kMaxJsonDepth; ++i) objects += "{\"a\":";
  EXPECT_THAT(ParseError(objects + "1"), HasSubstr("nested deeper than 128 levels"));
  // Hostile input far beyond the limit fails cleanly instead of exhausting the stack.
  EXPECT_THAT(ParseError(std::string(1 << 20, '[')), HasSubstr("nested deeper than 128 levels"));
}

TEST(JsonParseTest, ParsesLargeIntegerArrays) {
  std::vector<int32_t> values(500000);
  std::mt19937 rng(7);
  for (int32_t& v : values) v = static_cast<int32_t>(rng()) >> static_cast<int>(rng() % 31);
  std::string text;
  AppendJsonIntArray(&text, values);
  const JsonValue v = ParseOk(text);
  ASSERT_TRUE(v.is_int_array());
  const std::span<const int64_t> items = v.int_array_items();
  ASSERT_EQ(items.size(), values.size());
  for (size_t i = 0; i < values.size(); ++i) ASSERT_EQ(items[i], values[i]) << i;
}

TEST(JsonParseTest, PacksArraysOfIntegersOnly) {
  const JsonValue ints = ParseOk("[1, -2, 9223372036854775807]");
  EXPECT_TRUE(ints.is_array());
  EXPECT_TRUE(ints.is_int_array());
  EXPECT_EQ(ints.type(), JsonValue::Type::kArray);
  EXPECT_THAT(ints.int_array_items(), ElementsAre(1, -2, std::numeric_limits<int64_t>::max()));
  EXPECT_EQ(ints.array_size(), 3u);
  EXPECT_EQ(ints.item(1).int_value(), -2);

  // Anything but integers, an empty array and an integer beyond int64 (a double) unpack.
  for (const char* text : {"[]", "[1, 2.5]", "[1, 2, \"x\"]", "[1, null]", "[2, [3]]",
                           "[1, 9223372036854775808]", "[{}, 1]"}) {
    const JsonValue v = ParseOk(text);
    EXPECT_TRUE(v.is_array()) << text;
    EXPECT_FALSE(v.is_int_array()) << text;
  }
  const JsonValue mixed = ParseOk("[7, 8, [9, 10], 11]");
  const JsonValue::Array& items = mixed.array_items();
  ASSERT_EQ(items.size(), 4u);
  EXPECT_EQ(items[0].int_value(), 7);
  EXPECT_EQ(items[1].int_value(), 8);
  EXPECT_TRUE(items[2].is_int_array());
  EXPECT_THAT(items[2].int_array_items(), ElementsAre(9, 10));
  EXPECT_EQ(items[3].int_value(), 11);
  const JsonValue nested = ParseOk(R"({"rows": [[1, 2], [3, 4, 5]], "n": [6]})");
  EXPECT_THAT(nested.Find("rows")->array_items()[1].int_array_items(), ElementsAre(3, 4, 5));
  EXPECT_THAT(nested.Find("n")->int_array_items(), ElementsAre(6));
}

TEST(JsonValueTest, PackedArraysAreArraysOfInts) {
  const JsonValue packed = JsonValue::MakeIntArray({1, 2, 3});
  const JsonValue plain =
      JsonValue::MakeArray({JsonValue::Int(1), JsonValue::Int(2), JsonValue::Int(3)});
  EXPECT_FALSE(plain.is_int_array());
  EXPECT_EQ(packed, plain);
  EXPECT_EQ(plain, packed);
  EXPECT_NE(packed, JsonValue::MakeIntArray({1, 2}));
  EXPECT_NE(packed, JsonValue::MakeArray({JsonValue::Int(1), JsonValue::Int(2),
                                          JsonValue::Double(3.5)}));
  EXPECT_EQ(packed, JsonValue::MakeArray({JsonValue::Int(1), JsonValue::Int(2),
                                          JsonValue::Double(3.0)}));
  EXPECT_EQ(WriteJson(packed), "[1,2,3]");
  EXPECT_EQ(WriteJson(packed), WriteJson(plain));

  JsonValue copy = packed;
  EXPECT_TRUE(copy.is_int_array());
  EXPECT_EQ(copy, packed);
  // Changing the items unpacks the copy, not the original.
  copy.mutable_array_items().push_back(JsonValue::String("x"));
  EXPECT_FALSE(copy.is_int_array());
  EXPECT_EQ(WriteJson(copy), R"([1,2,3,"x"])");
  EXPECT_TRUE(packed.is_int_array());
  EXPECT_EQ(packed.array_size(), 3u);
}

TEST(JsonValueDeathTest, PackedArraysHaveNoJsonValueItems) {
  const JsonValue packed = JsonValue::MakeIntArray({1});
  EXPECT_DEATH((void)packed.array_items(), "a packed array of integers");
  EXPECT_DEATH((void)JsonValue::MakeArray().int_array_items(), "of type array");
  EXPECT_DEATH((void)packed.item(1), "item 1 of an array of 1");
}

TEST(JsonValueTest, BuildCopyAndCompare) {
  JsonValue object = JsonValue::MakeObject();
  object.mutable_object_members().emplace_back("n", JsonValue::Int(3));
  object.mutable_object_members().emplace_back(
      "list", JsonValue::MakeArray({JsonValue::Bool(true), JsonValue::String("s")}));
  JsonValue copy = object;
  EXPECT_EQ(copy, object);
  copy.mutable_object_members()[1].second.mutable_array_items().push_back(JsonValue::Null());
  EXPECT_NE(copy, object);  // deep copy
  EXPECT_EQ(object.Find("list")->array_items().size(), 2u);
  copy = object;
  EXPECT_EQ(copy, object);

  EXPECT_EQ(JsonValue::Int(2), JsonValue::Double(2.0));
  EXPECT_NE(JsonValue::Int(2), JsonValue::Double(2.5));
  EXPECT_NE(JsonValue::Int(0), JsonValue::Bool(false));
  EXPECT_NE(JsonValue::String("1"), JsonValue::Int(1));
  // Object comparison is ordered.
  const JsonValue ab = ParseOk(R"({"a": 1, "b": 2})");
  const JsonValue ba = ParseOk(R"({"b": 2, "a": 1})");
  EXPECT_NE(ab, ba);
  EXPECT_EQ(JsonTypeName(ab.type()), "object");
}

TEST(JsonWriteTest, WritesCompactJson) {
  const JsonValue v =
      ParseOk(R"( { "a" : [ 1 , -2.5 , true , false , null , "x\ny" ] , "b" : { } , "c" : [ ] } )");
  EXPECT_EQ(WriteJson(v), R"({"a":[1,-2.5,true,false,null,"x\ny"],"b":{},"c":[]})");
}

TEST(JsonWriteTest, EscapesStrings) {
  std::string out;
  AppendJsonString(&out, "q\" b\\ \b\f\n\r\t \x01\x1f\x7f é");
  EXPECT_EQ(out, "\"q\\\" b\\\\ \\b\\f\\n\\r\\t \\u0001\\u001F\x7f é\"");
  out.clear();
  AppendJsonString(&out, std::string("\0", 1));
  EXPECT_EQ(out, "\"\\u0000\"");
}

TEST(JsonWriteTest, NumbersAreShortestAndExact) {
  const auto write = [](double d) {
    std::string out;
    AppendJsonNumber(&out, d);
    return out;
  };
  EXPECT_EQ(write(0.1), "0.1");
  EXPECT_EQ(write(1234.0), "1234");
  EXPECT_EQ(write(-2.5), "-2.5");
  EXPECT_EQ(write(1e300), "1e+300");
  EXPECT_EQ(write(5e-324), "5e-324");
  EXPECT_EQ(write(-0.0), "-0.0");
  EXPECT_TRUE(std::signbit(ParseOk(write(-0.0)).number_value()));
  std::mt19937_64 rng(11);
  for (int i = 0; i < 20000; ++i) {
    double d;
    const uint64_t bits = rng();
    std::memcpy(&d, &bits, sizeof(d));
    if (!std::isfinite(d)) continue;
    const JsonValue parsed = ParseOk(write(d));
    ASSERT_EQ(parsed.number_value(), d) << write(d);
  }
}

TEST(JsonWriteTest, IntsAndIntArrays) {
  std::string out;
  AppendJsonInt(&out, std::numeric_limits<int64_t>::min());
  EXPECT_EQ(out, "-9223372036854775808");
  out = "x";
  const std::vector<int32_t> values = {0, -1, 2147483647, -2147483647 - 1, 42};
  AppendJsonIntArray(&out, values);
  EXPECT_EQ(out, "x[0, -1, 2147483647, -2147483648, 42]");
  out.clear();
  AppendJsonIntArray(&out, {});
  EXPECT_EQ(out, "[]");
  out.clear();
  AppendJsonIntArray(&out, values, ",");
  EXPECT_EQ(out, "[0,-1,2147483647,-2147483648,42]");
  out.clear();
  AppendJsonIntArray(&out, std::span<const int32_t>(values).first(1), ",");
  EXPECT_EQ(out, "[0]");
}

// Random documents survive write → parse unchanged.
JsonValue RandomValue(std::mt19937& rng, int depth) {
  const int kind = static_cast<int>(rng() % (depth > 4 ? 5 : 7));
  switch (kind) {
    case 0:
      return JsonValue::Null();
    case 1:
      return JsonValue::Bool(rng() % 2 == 0);
    case 2:
      return JsonValue::Int(static_cast<int64_t>((uint64_t{rng()} << 32) | rng()));
    case 3:
      return JsonValue::Double(
          std::ldexp(static_cast<double>(rng()) - 2e9, static_cast<int>(rng() % 200) - 100));
    case 4: {
      std::string s;
      const int n = static_cast<int>(rng() % 8);
      for (int i = 0; i < n; ++i) {
        const char* pieces[] = {"a", "\"", "\\", "\n", "\x01", "\xC3\xA9", "\xF0\x9F\x98\x80", "/"};
        s += pieces[rng() % 8];
      }
      return JsonValue::String(s);
    }
    case 5: {
      JsonValue::Array items;
      const int n = static_cast<int>(rng() % 5);
      for (int i = 0; i < n; ++i) items.push_back(RandomValue(rng, depth + 1));
      return JsonValue::MakeArray(std::move(items));
    }
    default: {
      JsonValue::Object members;
      const int n = static_cast<int>(rng() % 5);
      for (int i = 0; i < n; ++i) {
        members.emplace_back("key" + std::to_string(i), RandomValue(rng, depth + 1));
      }
      return JsonValue::MakeObject(std::move(members));
    }
  }
}

TEST(JsonWriteTest, RandomDocumentsRoundTrip) {
  std::mt19937 rng(3);
  for (int i = 0; i < 500; ++i) {
    const JsonValue v = RandomValue(rng, 0);
    const std::string text = WriteJson(v);
    ASSERT_EQ(ParseOk(text), v) << text;
    ASSERT_EQ(WriteJson(ParseOk(text)), text);
  }
}

}  // namespace
}  // namespace eplb
