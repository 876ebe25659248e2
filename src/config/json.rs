//! JSON text to a `serde_json::Value`, refusing an object that names the
//! same member twice.
//!
//! RFC 8259 4 only says names "SHOULD be unique"; serde_json's own `Value`
//! visitor keeps the last of a repeated member. For a security filter that
//! is a surprise: a reviewer reads the first `"jwt"` of a route, the filter
//! would apply the last, and tools that merge or lint JSON disagree on
//! which one wins. The same holds for tokens (RFC 7515 4, RFC 7519 4: a
//! parser either refuses duplicate names or takes the last, and parsers
//! taking different ones is an attack surface) and for keys.
//!
//! [`parse`] builds the same `Value` as `serde_json::from_str` (the same
//! visitor calls, one map lookup per member; no key has a special meaning,
//! where serde_json's visitor reads `$serde_json::private::RawValue`) but
//! fails on a member name seen before in the same object. Names compare as decoded strings
//! (`"a"` and `"\u0061"` are the same member). The error keeps serde_json's
//! line and column (of the repeated name) and says which object: its JSON
//! path (`routes[0].jwt`, keys joined by dots, indexes in brackets, `""` for
//! the top level), built only when a duplicate is found, while the error
//! goes up. [`parse_marking`] instead keeps the first of a repeated member
//! and lists where repeats were (a JWKS skips the keys that have one).
//! [`check`] only says whether text is valid and free of repeats, building
//! nothing (a token's header and its object and array claims, which stay
//! text until read).
//!
//! It lives in `config`, the ground floor, because the configuration
//! (`config::parse`), JWKS documents and tokens (`jwt`) all parse
//! untrusted JSON with it (`grpc` and `filter` read meshguard's own reply
//! bodies with it too): it is the module's only `Value` deserializer, one
//! instance over `&str`. Measured: the module grew 982,773 -> 988,455
//! bytes (with `check` and the token and JWKS rules); parsing a document is
//! 8 to 20% faster than serde_json's own `Value` (`benches/config_parse.rs`,
//! twins: examples/full.json and 2,000 routes).

use super::error::show_str;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};
use std::cell::{Cell, RefCell};
use std::fmt;

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// `a.b[0].c`: keys joined by dots, indexes in brackets (the
/// configuration's error paths).
pub fn show_path<'a>(steps: impl IntoIterator<Item = &'a Step>) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// A parse failure: serde_json's error (with line and column), and for a
/// repeated member the path of the object that repeats it.
#[derive(Debug)]
pub struct Error {
    pub error: serde_json::Error,
    /// `Some(path)` when the failure is a duplicate member (the message
    /// is then `duplicate member "name"`).
    pub duplicate: Option<String>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.duplicate {
            Some(p) if !p.is_empty() => write!(f, "{p}: {}", self.error),
            _ => self.error.fmt(f),
        }
    }
}

/// Parses JSON text; a repeated member name in any object is an error.
pub fn parse(text: &str) -> Result<Value, Error> {
    let ctx = Ctx {
        mark: false,
        path: RefCell::new(Vec::new()),
        marks: RefCell::new(Vec::new()),
        duplicate: Cell::new(false),
    };
    run(text, &ctx)
}

/// [`parse`] for bytes that must be UTF-8.
pub fn parse_slice(bytes: &[u8]) -> Result<Value, Error> {
    use de::Error as _;
    let text = std::str::from_utf8(bytes).map_err(|e| Error {
        error: serde_json::Error::custom(e),
        duplicate: None,
    })?;
    parse(text)
}

/// Parses JSON text keeping the first of a repeated member, and returns
/// with the value the path of every object that repeated one (each
/// repeat once, in document order).
pub fn parse_marking(text: &str) -> Result<(Value, Vec<Vec<Step>>), Error> {
    let ctx = Ctx {
        mark: true,
        path: RefCell::new(Vec::new()),
        marks: RefCell::new(Vec::new()),
        duplicate: Cell::new(false),
    };
    let v = run(text, &ctx)?;
    Ok((v, ctx.marks.into_inner()))
}

/// Whether JSON text is valid and no object in it names a member twice,
/// building nothing (member names are borrowed from the text unless
/// escaped): for text that is kept as text (token claims) and read later.
/// The error carries no path.
pub fn check(text: &str) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    Check.deserialize(&mut de)?;
    de.end()
}

/// Whether no name repeats (a few names compared pairwise, more sorted:
/// token names are read before the signature is checked).
pub fn unique<'a>(names: impl ExactSizeIterator<Item = &'a str> + Clone) -> bool {
    if names.len() <= 16 {
        let mut rest = names.clone();
        while let Some(a) = rest.next() {
            if rest.clone().any(|b| b == a) {
                return false;
            }
        }
        return true;
    }
    let mut sorted: Vec<&str> = names.collect();
    sorted.sort_unstable();
    sorted.windows(2).all(|w| w.first() != w.get(1))
}

fn run(text: &str, ctx: &Ctx) -> Result<Value, Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = Seed(ctx)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    v.map_err(|error| {
        let duplicate = ctx.duplicate.get().then(|| {
            // Innermost step first while the error went up.
            show_path(ctx.path.take().iter().rev())
        });
        Error { error, duplicate }
    })
}

struct Ctx {
    /// Keep the first of a repeated member (and note where) instead of
    /// failing.
    mark: bool,
    /// Marking: the path of the value being read. Refusing: the steps of
    /// a duplicate's object, innermost first, pushed as the error goes up.
    path: RefCell<Vec<Step>>,
    marks: RefCell<Vec<Vec<Step>>>,
    /// The error going up is a duplicate member.
    duplicate: Cell<bool>,
}

impl Ctx {
    /// An error passes a step on its way up: note it if it is a duplicate.
    fn up<E>(&self, step: impl FnOnce() -> Step, e: E) -> E {
        if self.duplicate.get() {
            self.path.borrow_mut().push(step());
        }
        e
    }
}

#[derive(Clone, Copy)]
struct Seed<'c>(&'c Ctx);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Number(i.into()))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(Value::Number(u.into()))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Number::from_f64(f).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let ctx = self.0;
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        loop {
            if ctx.mark {
                ctx.path.borrow_mut().push(Step::Index(out.len()));
            }
            let next = seq.next_element_seed(self);
            if ctx.mark {
                ctx.path.borrow_mut().pop();
            }
            match next {
                Ok(Some(v)) => out.push(v),
                Ok(None) => return Ok(Value::Array(out)),
                Err(e) => return Err(ctx.up(|| Step::Index(out.len()), e)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let ctx = self.0;
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            match out.entry(k) {
                Entry::Vacant(slot) => {
                    if ctx.mark {
                        ctx.path.borrow_mut().push(Step::Key(slot.key().clone()));
                    }
                    let v = map.next_value_seed(self);
                    if ctx.mark {
                        ctx.path.borrow_mut().pop();
                    }
                    match v {
                        Ok(v) => {
                            slot.insert(v);
                        }
                        Err(e) => return Err(ctx.up(|| Step::Key(slot.key().clone()), e)),
                    }
                }
                Entry::Occupied(first) => {
                    if !ctx.mark {
                        ctx.duplicate.set(true);
                        return Err(de::Error::custom(format_args!(
                            "duplicate member {}",
                            show_str(first.key())
                        )));
                    }
                    let here = ctx.path.borrow().clone();
                    ctx.marks.borrow_mut().push(here);
                    // Read (and check) the repeat, keep the first.
                    ctx.path.borrow_mut().push(Step::Key(first.key().clone()));
                    let v = map.next_value_seed(self);
                    ctx.path.borrow_mut().pop();
                    v?;
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// [`check`]'s visitor: reads any value, keeps nothing but each object's
/// member names while it is read.
#[derive(Clone, Copy)]
struct Check;

/// A member name (or any string), borrowed from the text when it has no
/// escapes.
pub struct Name<'de>(pub std::borrow::Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(s.into()))
            }
            fn visit_str<E>(self, s: &str) -> Result<Name<'de>, E> {
                Ok(Name(s.to_owned().into()))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> DeserializeSeed<'de> for Check {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut names: Vec<Name<'de>> = Vec::new();
        while let Some(k) = map.next_key::<Name<'de>>()? {
            map.next_value_seed(self)?;
            names.push(k);
        }
        if !unique(names.iter().map(|n| &*n.0)) {
            return Err(de::Error::custom("duplicate member"));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn dup(text: &str) -> (String, String) {
        let e = parse(text).unwrap_err();
        (
            e.duplicate.clone().expect("a duplicate"),
            e.error.to_string(),
        )
    }

    #[test]
    fn builds_what_serde_json_builds() {
        for text in [
            "null",
            "true",
            " false ",
            "0",
            "-0",
            "-1",
            "1.5",
            "1e300",
            "18446744073709551615",
            "-9223372036854775808",
            "123456789012345678901234567890",
            r#""a\u00e9\ud83d\ude00\n""#,
            "[]",
            "{}",
            r#"{"b":1,"a":[1,{"c":null,"d":[[]]}],"":{"":""}}"#,
            r#"[{"a":1},{"a":1}]"#,
            r#"{"a":{"x":1},"b":{"x":1}}"#,
        ] {
            let theirs: Value = serde_json::from_str(text).unwrap();
            assert_eq!(parse(text).unwrap(), theirs, "{text}");
            assert_eq!(parse_marking(text).unwrap(), (theirs, vec![]), "{text}");
        }
    }

    #[test]
    fn syntax_errors_are_serde_jsons() {
        for text in [
            "",
            "{",
            r#"{"a":1,}"#,
            "[1,]",
            "{} x",
            r#"{"a" 1}"#,
            "\"\\ud800\"",
        ] {
            let theirs = serde_json::from_str::<Value>(text).unwrap_err();
            let ours = parse(text).unwrap_err();
            assert_eq!(ours.duplicate, None, "{text}");
            assert_eq!(ours.error.to_string(), theirs.to_string(), "{text}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse(&deep).unwrap_err().to_string().contains("recursion"));
        let ok = "[".repeat(100) + &"]".repeat(100);
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn a_repeated_member_is_refused_with_its_object_path() {
        let cases = [
            (r#"{"a":1,"a":1}"#, "", "a"),
            (r#"{"a":1,"b":2,"a":3}"#, "", "a"),
            (r#"{"x":{"a":1,"a":null}}"#, "x", "a"),
            (r#"{"r":[{"m":1},{"jwt":{},"jwt":null}]}"#, "r[1]", "jwt"),
            (r#"[[0,{"k":{"a":{"b":1,"b":1}}}]]"#, "[0][1].k.a", "b"),
            // The same member however spelled: names compare decoded.
            (r#"{"a":1,"\u0061":2}"#, "", "a"),
            (r#"{"\u006a\u0077t":1,"jwt":2}"#, "", "jwt"),
            (r#"{"é":1,"\u00e9":2}"#, "", "é"),
            (r#"{"\ud83d\ude00":1,"😀":2}"#, "", "😀"),
            (r#"{"":1,"":2}"#, "", ""),
        ];
        for (text, path, name) in cases {
            let (p, msg) = dup(text);
            assert_eq!(p, path, "{text}");
            assert!(
                msg.starts_with(&format!("duplicate member {name:?} at line 1 column ")),
                "{text}: {msg}"
            );
        }
        // The line and column are the repeat's.
        let e = parse("{\n  \"a\": 1,\n  \"a\": 2\n}").unwrap_err();
        assert_eq!((e.error.line(), e.error.column()), (3, 5));
        assert_eq!(
            parse(r#"{"r":[{"jwt":1,"jwt":2}]}"#)
                .unwrap_err()
                .to_string(),
            "r[0]: duplicate member \"jwt\" at line 1 column 20"
        );
        // Different cases and normalisation forms are different names.
        assert!(parse(r#"{"a":1,"A":2,"e\u0301":3,"é":4}"#).is_ok());
        // A duplicate after a syntax error is never reached; a syntax
        // error after a duplicate is not either.
        assert_eq!(
            parse(r#"{"a":1,"a":2,}"#).unwrap_err().duplicate.as_deref(),
            Some("")
        );
        assert_eq!(parse(r#"{"a":[1,],"a":2}"#).unwrap_err().duplicate, None);
    }

    #[test]
    fn marking_keeps_the_first_and_says_where() {
        let (v, marks) = parse_marking(
            r#"{"keys":[{"n":"a"},{"n":"b","kty":"RSA","n":"c"}],"x":1,"x":{"y":[1,1]}}"#,
        )
        .unwrap();
        assert_eq!(v["keys"][1]["n"], "b");
        assert_eq!(v["x"], 1);
        assert_eq!(
            marks,
            vec![vec![Step::Key("keys".into()), Step::Index(1)], vec![],]
        );
        // A repeat is still read and checked.
        assert!(parse_marking(r#"{"a":1,"a":[}"#).is_err());
        let (_, marks) = parse_marking(r#"{"a":1,"a":{"b":1,"b":2}}"#).unwrap();
        assert_eq!(marks, vec![vec![], vec![Step::Key("a".into())]]);
    }

    #[test]
    fn check_agrees_with_parse() {
        for text in [
            "null",
            "[1,\"x\",{}]",
            r#"{"a":1,"b":{"a":[{"a":1},{"a":1}]}}"#,
            r#"{"a":1,"a":1}"#,
            r#"{"a":1,"\u0061":1}"#,
            r#"{"x":[{"b":1,"c":2,"b":3}]}"#,
            r#"{"a":1,}"#,
            "{} x",
            r#"{"é":1,"\u00e9":2}"#,
        ] {
            assert_eq!(check(text).is_ok(), parse(text).is_ok(), "{text}");
        }
        let many: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        let text = format!("{{{}}}", many.join(","));
        assert!(check(&text).is_ok() && parse(&text).is_ok());
        let text = format!("{{{},\"k3\":0}}", many.join(","));
        assert!(check(&text).is_err() && parse(&text).is_err());
        assert!(check(&("[".repeat(200) + &"]".repeat(200))).is_err());
    }

    #[test]
    fn no_member_name_is_special() {
        // serde_json's own visitor (feature `raw_value`) reads an object
        // whose first key is this token as the JSON text of its string:
        // another parser would see a different document.
        let text = r#"{"o":{"$serde_json::private::RawValue":"{\"id\":\"admin\"}"}}"#;
        let theirs: Value = serde_json::from_str(text).unwrap();
        assert_eq!(theirs["o"]["id"], "admin");
        let ours = parse(text).unwrap();
        assert_eq!(ours["o"]["id"], Value::Null);
        assert_eq!(
            ours["o"]["$serde_json::private::RawValue"],
            "{\"id\":\"admin\"}"
        );
    }

    #[test]
    fn bytes_must_be_utf8() {
        assert!(parse_slice(b"{\"a\":\"\xff\"}").is_err());
        assert_eq!(parse_slice(b"{\"a\":1}").unwrap()["a"], 1);
        assert!(parse_slice(b"{\"a\":1,\"a\":1}")
            .unwrap_err()
            .duplicate
            .is_some());
    }
}
