//! The torch `.bin` reader: any bytes either read as a state dict whose every tensor has the
//! bytes its dtype and shape need (and round-trips through our writer), or give an error; never a
//! panic, an out-of-bounds read or an allocation out of proportion to the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peft_wgpu::formats::torch_bin;

fuzz_target!(|data: &[u8]| {
    let Ok(tensors) = torch_bin::read_bytes(data) else {
        return;
    };
    for t in &tensors {
        let n: usize = t.shape.iter().product();
        let es = if t.dtype == safetensors::Dtype::F32 { 4 } else { 2 };
        assert_eq!(t.data.len(), n * es, "{}: {:?} {:?}", t.name, t.dtype, t.shape);
    }
    let bytes = torch_bin::serialize_raw(&tensors).expect("what we read, we can write");
    assert_eq!(torch_bin::read_bytes(&bytes).expect("what we write, we can read"), tensors);
});
