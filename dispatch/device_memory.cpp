// anvil::device_malloc & co.: each call goes to the backend whose records declare the
// device type (BackendRecord::memory); host memory uses the C allocator.
#include <cstdlib>
#include <cstring>

#include "anvil/runtime.h"
#include "dispatch/registry.h"

namespace anvil {
namespace {

Status memory_of(DeviceType type, const dispatch::DeviceMemory** memory) {
  for (const dispatch::BackendRecord& b : dispatch::tables().backends()) {
    if (!b.memory) continue;
    for (DeviceType t : b.device_types)
      if (t == type) {
        if (b.available) ANVIL_RETURN_IF_ERROR(b.available().with_context(b.name + ": "));
        *memory = b.memory;
        return Status::Ok();
      }
  }
  return {StatusCode::not_found,
          std::string("no backend in this build manages ") + device_type_name(type) + " memory"};
}

}  // namespace

Status set_stream(DeviceType type, void* stream) {
  const dispatch::DeviceMemory* memory = nullptr;
  ANVIL_RETURN_IF_ERROR(memory_of(type, &memory));
  memory->set_stream(stream);
  return Status::Ok();
}

void* current_stream(DeviceType type) {
  const dispatch::DeviceMemory* memory = nullptr;
  return memory_of(type, &memory).ok() ? memory->stream() : nullptr;
}

Status device_malloc(Device device, int64_t bytes, void** out) {
  *out = nullptr;
  if (bytes < 0) return invalid_argument("device_malloc: bytes must be >= 0, got " + std::to_string(bytes));
  if (device.type == DeviceType::host) {
    *out = bytes ? std::malloc(size_t(bytes)) : nullptr;
    return *out || !bytes ? Status::Ok() : Status(StatusCode::out_of_memory, "malloc failed");
  }
  const dispatch::DeviceMemory* memory = nullptr;
  ANVIL_RETURN_IF_ERROR(memory_of(device.type, &memory));
  return memory->allocate(device.index, bytes, out);
}

Status device_free(Device device, void* data) {
  if (device.type == DeviceType::host) {
    std::free(data);
    return Status::Ok();
  }
  const dispatch::DeviceMemory* memory = nullptr;
  ANVIL_RETURN_IF_ERROR(memory_of(device.type, &memory));
  return memory->release(device.index, data);
}

Status copy_to_device(Device device, void* dst, const void* host_src, int64_t bytes) {
  if (bytes <= 0) return Status::Ok();
  if (device.type == DeviceType::host) {
    std::memcpy(dst, host_src, size_t(bytes));
    return Status::Ok();
  }
  const dispatch::DeviceMemory* memory = nullptr;
  ANVIL_RETURN_IF_ERROR(memory_of(device.type, &memory));
  return memory->to_device(device.index, dst, host_src, bytes);
}

Status copy_to_host(Device device, void* host_dst, const void* src, int64_t bytes) {
  if (bytes <= 0) return Status::Ok();
  if (device.type == DeviceType::host) {
    std::memcpy(host_dst, src, size_t(bytes));
    return Status::Ok();
  }
  const dispatch::DeviceMemory* memory = nullptr;
  ANVIL_RETURN_IF_ERROR(memory_of(device.type, &memory));
  return memory->to_host(device.index, host_dst, src, bytes);
}

Status synchronize(Device device) {
  if (device.type == DeviceType::host) return Status::Ok();
  const dispatch::DeviceMemory* memory = nullptr;
  ANVIL_RETURN_IF_ERROR(memory_of(device.type, &memory));
  return memory->synchronize(device.index);
}

}  // namespace anvil
