//! Reading a request body as JSON without letting it grow in memory.
//!
//! `serde_json::Value` takes 32 bytes or more for every value, so a 1 MB body of
//! `[0,0,0,…]` becomes 16 MB or more once parsed: a small body buys a large
//! allocation, and concurrent ones add up (48 such bodies held a server at 1.9 GB).
//! [`parse_bounded`] builds the same `Value` but stops at [`MAX_VALUES`] values, which
//! no real request comes near, so the parsed form stays within a small multiple of
//! the body's size and an oversized body is refused as soon as the budget runs out.
//! [`ValueCounter`] lets the reader of a body see the same thing coming before it has
//! kept the bytes, so it can drain the rest instead of holding it.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::validation::ValidationErrors;

/// Most JSON values (scalars, arrays and objects, nested ones included) in one body. A
/// generate request has fewer than 20; this leaves room for generous clients and for
/// validation to list what is wrong with a body of hundreds of unknown keys. (At 10,000,
/// 48 bodies of 9,500 unknown keys at once, each parsed whole, left the server 73 MiB
/// larger on a loaded machine; refused while they arrive, they cost next to nothing.)
pub const MAX_VALUES: usize = 1_000;

/// Parses `bytes` as one JSON value of at most [`MAX_VALUES`] values. Every failure is
/// a problem with the body as a whole, in the words a client can act on.
pub fn parse_bounded(bytes: &[u8]) -> Result<Value, ValidationErrors> {
    let budget = Budget { left: Cell::new(MAX_VALUES), exceeded: Cell::new(false) };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Node(&budget).deserialize(&mut de).and_then(|value| de.end().map(|()| value));
    match parsed {
        Ok(value) => Ok(value),
        Err(_) if budget.exceeded.get() => Err(too_many_values()),
        // serde_json's messages name a position, never the input itself.
        Err(e) => Err(ValidationErrors::root(format!("Invalid JSON: {e}"))),
    }
}

/// The refusal of a body over the budget of values.
pub fn too_many_values() -> ValidationErrors {
    ValidationErrors::root(format!(
        "Request body holds more than {MAX_VALUES} JSON values; a generate request needs a few dozen"
    ))
}

/// Counts the commas outside strings of a JSON text fed piece by piece.
///
/// `n` such commas separate at least `n + 1` values inside a container that is a
/// value too, so once [`ValueCounter::over_budget`] holds, [`parse_bounded`] would
/// refuse the text as well (or it is not JSON at all): the reader can stop keeping it.
#[derive(Clone, Debug, Default)]
pub struct ValueCounter {
    in_string: bool,
    escaped: bool,
    commas: usize,
}

impl ValueCounter {
    /// Scans the next piece of the text.
    pub fn feed(&mut self, bytes: &[u8]) {
        // UTF-8 continuation bytes are all >= 0x80, so they never look like `"`, `\` or `,`.
        for &b in bytes {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
            } else if b == b'"' {
                self.in_string = true;
            } else if b == b',' {
                self.commas += 1;
            }
        }
    }

    /// Whether the text seen so far holds more than [`MAX_VALUES`] values.
    pub fn over_budget(&self) -> bool {
        self.commas >= MAX_VALUES
    }
}

struct Budget {
    left: Cell<usize>,
    exceeded: Cell<bool>,
}

impl Budget {
    /// Takes one value from the budget, or fails the parse when none is left.
    fn take<E: de::Error>(&self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.exceeded.set(true);
                Err(E::custom("too many JSON values"))
            }
        }
    }
}

/// One value of the document; builds exactly what `Value`'s own `Deserialize` would.
#[derive(Clone, Copy)]
struct Node<'a>(&'a Budget);

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        self.0.take()?;
        // JSON text cannot spell NaN or infinity, so this is always a number.
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.take()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.0.take()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self)?;
            // A repeated key keeps its last value, as serde_json's own Value does.
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::ROOT_PATH;

    #[test]
    fn builds_what_serde_json_builds() {
        for text in [
            r#"{"model":"hailuo-2.3","prompt":"a \"cat\" \u00e9","hailuoParams":{"duration":6,"x":[1,-2,3.5,1e300]},"n":null,"b":true}"#,
            "[]",
            "{}",
            "\"text\"",
            "18446744073709551615",
            "-9223372036854775808",
            r#"{"a":1,"a":2}"#,
        ] {
            let ours = parse_bounded(text.as_bytes()).unwrap();
            let theirs: Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn bad_json_and_trailing_text_are_refused_at_the_root() {
        for text in ["", "{", "{\"a\":}", "[1,]", "{} {}", "nul", "[1] x"] {
            let errors = parse_bounded(text.as_bytes()).unwrap_err();
            let message = &errors.listed()[ROOT_PATH][0];
            assert!(message.starts_with("Invalid JSON: "), "{text:?}: {message}");
        }
    }

    #[test]
    fn a_body_of_many_small_values_is_refused_without_being_built() {
        let mut body = String::from("[");
        body.push_str(&"0,".repeat(499_999));
        body.push_str("0]");
        let errors = parse_bounded(body.as_bytes()).unwrap_err();
        assert!(errors.listed()[ROOT_PATH][0].contains("more than 1000 JSON values"));
        // Exactly at the budget still parses: an array and MAX_VALUES - 1 items.
        let at_budget = format!("[{}0]", "0,".repeat(MAX_VALUES - 2));
        assert_eq!(parse_bounded(at_budget.as_bytes()).unwrap().as_array().unwrap().len(), MAX_VALUES - 1);
        let over = format!("[{}0]", "0,".repeat(MAX_VALUES - 1));
        assert!(parse_bounded(over.as_bytes()).is_err());
    }

    #[test]
    fn the_counter_sees_the_excess_before_the_end_and_ignores_commas_in_strings() {
        let mut counter = ValueCounter::default();
        counter.feed(br#"{"a":"x,y,\",\\","b":["#);
        assert_eq!(counter.commas, 1, "only the one outside the strings");
        for _ in 0..MAX_VALUES {
            counter.feed(b"0,");
        }
        assert!(counter.over_budget());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// The counter never refuses what the parser accepts, and the parser never
            /// panics nor disagrees with serde_json on what it accepts.
            #[test]
            fn counter_and_parser_agree(text in prop_oneof![
                "\\PC{0,64}",
                "[\\[\\]{}\",:0-9a-z\\\\ ]{0,64}",
            ], split in 0usize..64) {
                let bytes = text.as_bytes();
                let mut counter = ValueCounter::default();
                let split = split.min(bytes.len());
                counter.feed(&bytes[..split]);
                counter.feed(&bytes[split..]);
                match parse_bounded(bytes) {
                    Ok(value) => {
                        prop_assert!(!counter.over_budget());
                        prop_assert_eq!(value, serde_json::from_slice::<Value>(bytes).unwrap());
                    }
                    Err(e) => prop_assert!(!e.is_empty()),
                }
            }
        }
    }
}
