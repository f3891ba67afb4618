// Python -> C++: reads what value_writer.py publishes (a str, then an int32 array).
// Run: ./value_reader & python examples/cpp/value_writer.py
#include <shmipc/shmipc.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "example_config";
    auto v = shmipc::SharedValue::create(name, {.size = 4096});
    std::uint64_t seen = 0;
    for (;;) {
        if (!v.wait(seen, std::chrono::seconds(30)))
            throw shmipc::Timeout("no write from the Python writer");
        shmipc::Value x = v.read();
        seen = x.version;
        if (x.kind == shmipc::Value::Kind::Text) {
            std::cout << "reader: text '" << x.text() << "'\n";
        } else if (x.kind == shmipc::Value::Kind::Array) {
            auto a = x.as<std::int32_t>(); // dtype checked: int32 from NumPy
            std::cout << "reader: int32 array of " << a.size() << ", last " << a.back() << "\n";
            return 0;
        }
    }
}
