//! Facts about the running kernel, read before and besides the probes: struct layouts
//! from BTF, the tracefs mount, kernel symbol addresses, the capabilities this process
//! holds, and the sysctls the probes are configured from. Nothing here depends on
//! another sockq module.

pub mod btf_layout;
pub mod capabilities;
pub mod kallsyms;
pub mod netns_cookie;
pub mod sysctl;
pub mod tracefs;
