// sendmsg/recvmsg with SCM_RIGHTS for one memfd plus a small framed payload.
//
// Wire format (every socket type): WireHeader, then meta_len bytes of user metadata, then
// desc_len bytes of array descriptor; the fd rides on the first byte (SCM_RIGHTS). Stream
// sockets are read exactly (header first, so the fd is taken with it); datagram and seqpacket
// sockets carry one message per datagram.
#pragma once

#include "ipc_core/base/deadline.hpp"
#include "ipc_core/base/unique_fd.hpp"

#include <cstdint>
#include <string>
#include <string_view>

namespace shmipc {

inline constexpr std::uint32_t kWireMagic = 0x46424d53; // "SMBF"
inline constexpr std::uint16_t kWireVersion = 1;
inline constexpr std::size_t kMaxMetaBytes = 64 * 1024;
inline constexpr std::size_t kMaxDescBytes = 64 * 1024;
inline constexpr int kMaxFdsAccepted = 4; // room to see (and close) extra fds

struct WireHeader {
    std::uint32_t magic;
    std::uint16_t version;
    std::uint16_t flags;    // reserved, 0
    std::uint64_t nbytes;   // bytes of the memfd the receiver may use
    std::uint32_t meta_len; // <= kMaxMetaBytes
    std::uint32_t desc_len; // <= kMaxDescBytes
    std::uint64_t reserved;
};
static_assert(sizeof(WireHeader) == 32);

// Sends one memfd with its framing. Blocks (interruptibly) while the socket is full.
void send_fd_message(int sock, int memfd, std::uint64_t nbytes, std::string_view meta,
                     std::string_view desc);

struct FdMessage {
    UniqueFd fd;
    std::uint64_t nbytes = 0;
    std::uint64_t file_size = 0;
    bool write_sealed = false; // F_SEAL_WRITE or F_SEAL_FUTURE_WRITE: map read-only
    std::string meta;
    std::string desc;
};

// Receives one message. InvalidArgument for a socket that is not AF_UNIX (nothing consumed);
// OsError EMFILE when no fd could be received (nothing consumed); EndOfStream if the peer closed,
// Timeout when the deadline passes,
// CorruptSegment for garbage (wrong header, no fd, extra fds, MSG_CTRUNC, an fd that is not a
// memfd sealed against shrinking, or smaller than announced). Every received fd is owned before
// anything can fail, so none leaks.
[[nodiscard]] FdMessage recv_fd_message(int sock, const Deadline &deadline);

// Called when a receive finds no free fd slot, before it gives up with EMFILE (the buffer pool
// registers itself: it gives back the fds of its idle buffers).
void set_fd_pressure_hook(void (*hook)()) noexcept;

// Waits until the fd is readable (or writable); throws Timeout, runs check_interrupt().
void wait_fd(int fd, bool for_write, const Deadline &deadline);

} // namespace shmipc
