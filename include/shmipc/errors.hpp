// shmipc's exceptions, one type per condition, all rooted at shmipc::Error: a C++ program
// catches everything shmipc throws with one handler. These are the engine's own types (the
// engine includes this header), so a C++ caller sees exactly what the Python layer translates:
//
//   C++ type          Python exception
//   Error             shmipc.ShmipcError
//   CorruptSegment    shmipc.CorruptSegmentError (a ValueError)
//   PeerDied          shmipc.PeerDiedError (an EOFError)
//   ChannelBusy       shmipc.ChannelBusyError
//   LimitReached      shmipc.ShmipcError
//   Timeout           TimeoutError (queue.Empty / queue.Full for queues)
//   EndOfStream       EOFError
//   OutOfMemory       MemoryError
//   BufferBusy        BufferError
//   Closed            ValueError ("... is closed")
//   InvalidArgument   ValueError
//   UsageError        ValueError
//   OsError           OSError with errno (err(), code())
//
// Part of the installed public API (include/shmipc/); no other shmipc header is needed.
#pragma once

#include <stdexcept>
#include <string>
#include <system_error>

namespace shmipc {

// Base of the package's own errors (shmipc.ShmipcError).
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A segment, fd or message that is not what it claims to be, or shared memory a peer scribbled
// over (shmipc.CorruptSegmentError, a ValueError).
struct CorruptSegment : Error {
    using Error::Error;
};

// The peer of a wait died, or left without closing (shmipc.PeerDiedError, an EOFError).
struct PeerDied : Error {
    using Error::Error;
};

// A second live sender, receiver or publisher on a single-endpoint object
// (shmipc.ChannelBusyError).
struct ChannelBusy : Error {
    using Error::Error;
};

// A fixed limit was reached: client table full, too many subscribers (shmipc.ShmipcError, the
// message names the limit).
struct LimitReached : Error {
    using Error::Error;
};

// A bounded wait ran out (TimeoutError; queue.Empty/queue.Full in the Python layer's queue).
struct Timeout : Error {
    using Error::Error;
};

// Orderly end of stream: the peer closed (EOFError).
struct EndOfStream : Error {
    using Error::Error;
};

// Out of shared memory; the message says how much was asked and how much is free (MemoryError).
struct OutOfMemory : Error {
    using Error::Error;
};

// Misuse of a buffer that is exported, moved or sealed (BufferError).
struct BufferBusy : Error {
    using Error::Error;
};

// Using an object after close() (ValueError "... is closed").
struct Closed : Error {
    using Error::Error;
};

// A bad argument: wrong size, name, alignment, offset, mode (ValueError).
struct InvalidArgument : Error {
    using Error::Error;
};

// Using the API in a way it does not allow: the wrong role of a handle, an allocator bound to
// no heap (ValueError).
struct UsageError : Error {
    using Error::Error;
};

// A failed system call, with its errno (OSError with errno set: FileExistsError,
// PermissionError, ... by errno). The message names the call.
class OsError : public Error {
  public:
    OsError(int err, const std::string &what)
        : Error(what + ": " + std::generic_category().message(err)), err_(err) {}
    [[nodiscard]] int err() const noexcept { return err_; }
    [[nodiscard]] std::error_code code() const noexcept { return {err_, std::generic_category()}; }

  private:
    int err_;
};

} // namespace shmipc
