//! Deserializing a parsed JSON `Value` into the raw document while keeping
//! the JSON path of the first error (`routes[1].rate_limit[0].capacity`).
//!
//! serde_json's own `&Value` deserializer does the work; this wrapper only
//! steps into objects and arrays itself, so that an error coming out of a
//! member or an element gets that member's key or element's index added
//! as it goes up. The visitors are the derived ones, unwrapped: the code
//! is serde_json's `from_value` plus two small access types, where a
//! generic path-tracking crate wraps every visitor of every type (about
//! 100 KB of the module).

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Error, Map, Value};
use std::cell::RefCell;

/// One step of a path, innermost first while an error goes up.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Deserializes `T` from `value`: on failure, the error and the JSON path
/// where it happened (`""` for the document itself).
pub fn from_value<'de, T: de::Deserialize<'de>>(value: &'de Value) -> Result<T, (String, Error)> {
    let steps = RefCell::new(Vec::new());
    T::deserialize(Tracked {
        value,
        steps: &steps,
    })
    .map_err(|e| (render(&steps.borrow()), e))
}

/// `a.b[0].c` from the steps (innermost first), as serde_path_to_error
/// printed it: keys joined by dots, indexes in brackets.
fn render(steps: &[Step<'_>]) -> String {
    let mut out = String::new();
    for step in steps.iter().rev() {
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

#[derive(Clone, Copy)]
struct Tracked<'de, 's> {
    value: &'de Value,
    steps: &'s RefCell<Vec<Step<'de>>>,
}

impl<'de, 's> Tracked<'de, 's> {
    fn visit_object<V: Visitor<'de>>(
        self,
        map: &'de Map<String, Value>,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let mut access = Members {
            iter: map.iter(),
            pending: None,
            steps: self.steps,
        };
        let out = visitor.visit_map(&mut access)?;
        if access.iter.len() == 0 {
            Ok(out)
        } else {
            Err(de::Error::invalid_length(
                map.len(),
                &"fewer elements in map",
            ))
        }
    }

    fn visit_array<V: Visitor<'de>>(
        self,
        items: &'de [Value],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let mut access = Elements {
            iter: items.iter().enumerate(),
            steps: self.steps,
        };
        let out = visitor.visit_seq(&mut access)?;
        if access.iter.len() == 0 {
            Ok(out)
        } else {
            Err(de::Error::invalid_length(
                items.len(),
                &"fewer elements in array",
            ))
        }
    }
}

impl Tracked<'_, '_> {
    /// serde_json's error for a value of the wrong type. (Calling its
    /// `&Value` deserializer for it instead would compile every visitor of
    /// an object or array a second time, with serde_json's own access
    /// types, for a branch never taken.)
    fn invalid_type(self, exp: &dyn de::Expected) -> Error {
        let unexp = match self.value {
            Value::Null => de::Unexpected::Unit,
            Value::Bool(b) => de::Unexpected::Bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => de::Unexpected::Unsigned(u),
                (None, Some(i), _) => de::Unexpected::Signed(i),
                (None, None, Some(f)) => de::Unexpected::Float(f),
                _ => de::Unexpected::Other("number"),
            },
            Value::String(s) => de::Unexpected::Str(s),
            Value::Array(_) => de::Unexpected::Seq,
            Value::Object(_) => de::Unexpected::Map,
        };
        de::Error::invalid_type(unexp, exp)
    }
}

/// Everything but objects and arrays goes straight to serde_json's `&Value`
/// deserializer (same values, same errors).
macro_rules! scalar {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.value.$method(visitor)
        }
    )*};
}

impl<'de, 's> Deserializer<'de> for Tracked<'de, 's> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Object(m) => self.visit_object(m, visitor),
            Value::Array(a) => self.visit_array(a, visitor),
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => n.deserialize_any(visitor),
            Value::String(s) => visitor.visit_borrowed_str(s),
        }
    }

    scalar! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f32 deserialize_f64
        deserialize_char deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_unit deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.value.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Array(a) => self.visit_array(a, visitor),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Object(m) => self.visit_object(m, visitor),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.value {
            Value::Object(m) => self.visit_object(m, visitor),
            Value::Array(a) => self.visit_array(a, visitor),
            _ => Err(self.invalid_type(&visitor)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // No externally tagged enum with data in the document: serde_json's
        // own handling (a unit variant's string) is all there is.
        self.value.deserialize_enum(name, variants, visitor)
    }
}

struct Members<'de, 's> {
    iter: serde_json::map::Iter<'de>,
    pending: Option<(&'de str, &'de Value)>,
    steps: &'s RefCell<Vec<Step<'de>>>,
}

impl<'de> MapAccess<'de> for Members<'de, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.iter.next() {
            Some((key, value)) => {
                self.pending = Some((key.as_str(), value));
                let de = de::value::BorrowedStrDeserializer::<'de, Error>::new(key.as_str());
                seed.deserialize(de).map(Some).inspect_err(|_| {
                    // An unknown or misspelt key: the path names it.
                    self.steps.borrow_mut().push(Step::Key(key.as_str()));
                })
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.pending.take() {
            Some((key, value)) => seed
                .deserialize(Tracked {
                    value,
                    steps: self.steps,
                })
                .inspect_err(|_| {
                    self.steps.borrow_mut().push(Step::Key(key));
                }),
            None => Err(de::Error::custom("value is missing")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct Elements<'de, 's> {
    iter: std::iter::Enumerate<std::slice::Iter<'de, Value>>,
    steps: &'s RefCell<Vec<Step<'de>>>,
}

impl<'de> SeqAccess<'de> for Elements<'de, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.iter.next() {
            Some((i, value)) => seed
                .deserialize(Tracked {
                    value,
                    steps: self.steps,
                })
                .map(Some)
                .inspect_err(|_| {
                    self.steps.borrow_mut().push(Step::Index(i));
                }),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        n: u32,
        #[serde(default)]
        tags: Option<Vec<String>>,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        items: Vec<Inner>,
        #[serde(default)]
        named: BTreeMap<String, Inner>,
    }

    fn fail(doc: &str) -> (String, String) {
        let v: Value = serde_json::from_str(doc).unwrap();
        let (path, e) = from_value::<Outer>(&v).unwrap_err();
        (path, e.to_string())
    }

    #[test]
    fn a_valid_document_reads_as_serde_json_reads_it() {
        let doc = r#"{"items": [{"n": 1}, {"n": 2, "tags": ["a"]}], "named": {"x": {"n": 3, "tags": null}}}"#;
        let v: Value = serde_json::from_str(doc).unwrap();
        let ours = from_value::<Outer>(&v)
            .map_err(|(_, e)| e.to_string())
            .unwrap();
        let theirs: Outer = serde_json::from_value(v).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn errors_name_keys_and_indexes_from_the_outside_in() {
        let (p, e) = fail(r#"{"items": [{"n": 1}, {"n": "x"}]}"#);
        assert_eq!(
            (p.as_str(), e.as_str()),
            ("items[1].n", "invalid type: string \"x\", expected u32")
        );
        let (p, e) = fail(r#"{"items": [], "named": {"k": {"n": 1, "tags": ["a", 7]}}}"#);
        assert_eq!(
            (p.as_str(), e.as_str()),
            (
                "named.k.tags[1]",
                "invalid type: integer `7`, expected a string"
            )
        );
        let (p, e) = fail(r#"{"items": [{"n": -1.5}]}"#);
        assert_eq!(
            (p.as_str(), e.as_str()),
            (
                "items[0].n",
                "invalid type: floating point `-1.5`, expected u32"
            )
        );
    }

    #[test]
    fn an_unknown_key_is_named_and_a_missing_one_names_its_object() {
        let (p, e) = fail(r#"{"items": [{"n": 1, "m": 2}]}"#);
        assert_eq!(p, "items[0].m");
        assert!(e.starts_with("unknown field `m`"), "{e}");
        let (p, e) = fail(r#"{"items": [{}]}"#);
        assert_eq!((p.as_str(), e.as_str()), ("items[0]", "missing field `n`"));
        let (p, e) = fail(r#"{"items": {"n": 1}}"#);
        assert_eq!(
            (p.as_str(), e.as_str()),
            ("items", "invalid type: map, expected a sequence")
        );
        let (p, _) = fail(r#"{"named": {}}"#);
        assert_eq!(p, "");
    }
}
