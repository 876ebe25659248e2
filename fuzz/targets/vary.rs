//! `Vary` of a response (names, `*`, allowlist, too many) and the request
//! side's normalised values and secondary key.
use meshguard::cache::vary;

pub fn run(data: &[u8]) {
    let h = super::common::fields(data);
    let allow: Vec<String> = ["accept", "accept-encoding", "accept-language", "x-a"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let names = match vary::vary_names(&h, &allow) {
        Ok(n) => n,
        Err(_) => h.iter().map(|(n, _)| n.clone()).take(20).collect(),
    };
    let a = vary::secondary_key(&names, &h);
    let b = vary::secondary_key(&names, &h);
    assert_eq!(a, b, "the secondary key is a function of the request");
    let _ = vary::normalise(h.iter().map(|(_, v)| v.as_slice()));
    let one = vec![("vary".to_string(), data.to_vec())];
    let _ = vary::vary_names(&one, &allow);
}
