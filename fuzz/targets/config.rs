//! The configuration document (`on_configure`): parse and validate.
pub fn run(data: &[u8]) {
    if let Ok(cfg) = meshguard::plan::Config::from_bytes(data) {
        // A valid document compiles into routes whose matchers must hold.
        for r in &cfg.routes {
            assert!(!r.name.is_empty());
        }
    }
}
