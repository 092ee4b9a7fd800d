//! Kernel symbol addresses from `/proc/kallsyms`: the Nagle / delayed-ACK programs
//! tell delayed-ACK timers from every other timer by their callback,
//! `tcp_delack_timer`.

use std::path::Path;

pub const KALLSYMS: &str = "/proc/kallsyms";

/// The address of `name` in a kallsyms listing (`ffffffff8208c810 t tcp_delack_timer`),
/// `Ok(None)` when absent. A listing of zero addresses means they are hidden from us.
pub fn address_of(listing: &str, name: &str) -> Result<Option<u64>, String> {
    for line in listing.lines() {
        let mut fields = line.split_whitespace();
        let (Some(addr), Some(_kind), Some(symbol)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        // Module symbols carry a fourth field `[module]`; the symbol stands alone.
        if symbol != name {
            continue;
        }
        let addr = u64::from_str_radix(addr, 16)
            .map_err(|_| format!("malformed kallsyms line {line:?}"))?;
        if addr == 0 {
            return Err(format!(
                "kernel symbol addresses are hidden (kptr_restrict): `{name}` reads as 0; \
                 sockq needs CAP_SYSLOG or kernel.kptr_restrict=0 for this"
            ));
        }
        return Ok(Some(addr));
    }
    Ok(None)
}

/// The address of `name` in the running kernel.
pub fn lookup(name: &str) -> Result<u64, String> {
    lookup_in(Path::new(KALLSYMS), name)
}

pub fn lookup_in(path: &Path, name: &str) -> Result<u64, String> {
    let listing = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    address_of(&listing, name)?
        .ok_or_else(|| format!("this kernel has no symbol `{name}` in {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_symbols_and_explains_hidden_ones() {
        let listing = "ffffffff8208c7a0 t tcp_write_timer\n\
                       ffffffff8208c810 t tcp_delack_timer\n\
                       ffffffffc0001000 t helper\t[mod]\n";
        assert_eq!(
            address_of(listing, "tcp_delack_timer"),
            Ok(Some(0xffff_ffff_8208_c810))
        );
        assert_eq!(
            address_of(listing, "helper"),
            Ok(Some(0xffff_ffff_c000_1000))
        );
        assert_eq!(address_of(listing, "tcp_delack"), Ok(None));
        let hidden = "0000000000000000 t tcp_delack_timer\n";
        assert!(
            address_of(hidden, "tcp_delack_timer")
                .unwrap_err()
                .contains("CAP_SYSLOG")
        );
        assert!(address_of("zz t tcp_delack_timer\n", "tcp_delack_timer").is_err());
        assert_eq!(address_of("garbage\n\n x\n", "tcp_delack_timer"), Ok(None));
    }

    #[test]
    fn the_running_kernel_has_the_delack_timer() {
        match lookup("tcp_delack_timer") {
            Ok(addr) => assert!(addr > 0),
            Err(e) => eprintln!("skipping: {e}"),
        }
    }
}
