// Error types of the engine. The binding layer maps each to one Python exception
// (see src/bindings/errors.cpp); std::system_error becomes OSError with errno.
#pragma once

#include <stdexcept>
#include <string>

namespace shmipc {

// Base of the package's own errors (shmipc.ShmipcError).
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A segment, fd or message that is not what it claims to be (shmipc.CorruptSegmentError).
struct CorruptSegment : Error {
    using Error::Error;
};

// The peer of a wait died (shmipc.PeerDiedError, an EOFError).
struct PeerDied : Error {
    using Error::Error;
};

// A second live sender or receiver on a channel (shmipc.ChannelBusyError).
struct ChannelBusy : Error {
    using Error::Error;
};

// A bounded wait ran out (TimeoutError; queue.Empty/Full in the Python layer).
struct Timeout : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Orderly end of stream: the peer closed (EOFError).
struct EndOfStream : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Out of shared memory, with a message that says how much was asked and is free (MemoryError).
struct OutOfMemory : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Misuse of a buffer that is exported, moved or sealed (BufferError).
struct BufferBusy : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Using an object after close() (ValueError "... is closed").
struct Closed : std::logic_error {
    using std::logic_error::logic_error;
};

[[noreturn]] void throw_errno(const char *call);
[[noreturn]] void throw_errno(int err, const char *call);

} // namespace shmipc
