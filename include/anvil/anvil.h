// Umbrella header of the anvil C++ API.
#pragma once

#include "anvil/dispatch.h"
#include "anvil/dtype.h"
#include "anvil/ops.h"
#include "anvil/runtime.h"
#include "anvil/status.h"
#include "anvil/tensor.h"
#include "anvil/version.h"  // generated into the build tree
