# Sourced by the GPU-machine scripts (bench/gpu.sh, bench/accuracy/gpu.sh): the Vulkan loader,
# unpacked from .gl/*.deb when the system has none (README "Benchmarks on a GPU"), and the NVIDIA
# ICD where the driver's folder holds it.
if ! ldconfig -p | grep -q 'libvulkan.so.1'; then
  for f in .gl/*.deb; do [ -f "$f" ] && dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -f "$icd" ] && [ -z "${VK_DRIVER_FILES:-}" ]; then
  export VK_DRIVER_FILES=$icd
fi
