#pragma once
// The SIGINT/SIGTERM/SIGHUP clean-up of atomic_file.hpp (temporaries and staged outputs removed,
// exit 130), installed now rather than with the first temporary, so that a tool stopped before
// it wrote anything also exits 130 (not 143 for SIGTERM). Every tool calls it first
// (tools/cli.hpp). A program's own handlers (quarot-batch's) are kept.

namespace quarot {

void install_signal_cleanup();

}  // namespace quarot
