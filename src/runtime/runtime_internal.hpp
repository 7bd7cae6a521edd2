#pragma once
// Shared inside src/runtime only.
#include <optional>

#include "quarot/packed.hpp"

namespace quarot {

// The k a packed model runs with (the file's unless given); throws when any k > 0 and the file
// has no QDEC section.
QdecK checked_qdec_k(const PackedModel& m, std::optional<QdecK> k);

}  // namespace quarot
