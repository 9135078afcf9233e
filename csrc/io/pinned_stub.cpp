#include "pinned.h"

#ifndef AUTOFREEZE_WITH_CUDA
namespace autofreeze {
bool pin_host(void*, size_t) { return false; }
void unpin_host(void*) {}
}  // namespace autofreeze
#endif
