//! `peft`: the command-line tool (see [`peft_wgpu::cli`]).

fn main() {
    peft_wgpu::cli::main()
}
