//! Adding and removing our entry in a conflist *as text*.
//!
//! A conflist belongs to the main plugin (Flannel, kindnet, k3s, Calico...)
//! and to whoever wrote it by hand: its layout, key order, indentation and
//! any key we do not know must survive us. So the entry is spliced into the
//! `plugins` array's text instead of re-serialising the document: chaining
//! inserts `,` + the separator the array already uses + the entry after the
//! last element, and unchaining removes exactly that span again, so install
//! then uninstall gives back the original bytes.
//!
//! The document is first parsed in full (a malformed file is an error, never
//! half-edited); element spans come from `serde_json`'s borrowed
//! [`RawValue`]s, which point into the text being edited.

use std::collections::BTreeMap;
use std::ops::Range;

use serde_json::value::RawValue;
use serde_json::Value;

use super::PLUGIN_TYPE;

/// Why a conflist's text cannot be edited.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The file is not UTF-8 text.
    #[error("not UTF-8 text: {0}")]
    NotUtf8(#[source] std::str::Utf8Error),
    /// The text is not JSON (the cause names line and column).
    #[error("not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The document is JSON but not an object.
    #[error("not a JSON object")]
    NotAnObject,
    /// There is no `plugins` key: a single-plugin `.conf`, which cannot chain.
    #[error("not a plugin list (no \"plugins\" array): palisade-cni can only be chained into a .conflist")]
    NotAConflist,
    /// `plugins` is there but holds something else than an array.
    #[error("\"plugins\" is not an array")]
    PluginsNotAnArray,
    /// An element of `plugins` is not an object.
    #[error("plugins[{index}] is not a JSON object")]
    PluginNotAnObject {
        /// Its position in the array.
        index: usize,
    },
}

/// The `plugins` array of a document: where its text opens and each
/// element's byte range and value.
struct Plugins {
    /// Byte offset just after the array's `[`.
    open: usize,
    /// Each element: its byte range in the text and its value.
    items: Vec<(Range<usize>, Value)>,
}

/// Byte offset of `part` inside `whole`; `part` must be a sub-slice of it
/// (as every borrowed [`RawValue`] of a document parsed from `whole` is).
fn offset_in(part: &str, whole: &str) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

fn plugins(text: &str) -> Result<Plugins, EditError> {
    // A full parse first: it rejects any malformed text with a position.
    let doc: Value = serde_json::from_str(text).map_err(EditError::Json)?;
    if !doc.is_object() {
        return Err(EditError::NotAnObject);
    }
    let top: BTreeMap<String, &RawValue> = serde_json::from_str(text).map_err(EditError::Json)?;
    let raw = top.get("plugins").ok_or(EditError::NotAConflist)?;
    let elements: Vec<&RawValue> =
        serde_json::from_str(raw.get()).map_err(|_| EditError::PluginsNotAnArray)?;
    let open = offset_in(raw.get(), text) + 1;
    let mut items = Vec::with_capacity(elements.len());
    for (index, element) in elements.into_iter().enumerate() {
        let value: Value = serde_json::from_str(element.get()).map_err(EditError::Json)?;
        if !value.is_object() {
            return Err(EditError::PluginNotAnObject { index });
        }
        let start = offset_in(element.get(), text);
        items.push((start..start + element.get().len(), value));
    }
    Ok(Plugins { open, items })
}

/// Whether a plugin entry is ours.
pub fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// `text` without element `index` of the array: with the comma and
/// separator before it (or, for the first of several, after it).
fn remove(text: &str, p: &Plugins, index: usize) -> String {
    let span = if index > 0 {
        p.items[index - 1].0.end..p.items[index].0.end
    } else if let Some(next) = p.items.get(1) {
        p.items[0].0.start..next.0.start
    } else {
        p.items[0].0.clone()
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..span.start]);
    out.push_str(&text[span.end..]);
    out
}

/// `text` with `entry` appended to the array, separated from the previous
/// element the way the array already separates its elements.
fn append(text: &str, p: &Plugins, entry: &str) -> String {
    let n = p.items.len();
    let (at, insert) = match n {
        0 => (p.open, entry.to_string()),
        _ => {
            let sep = if n >= 2 {
                let between = &text[p.items[n - 2].0.end..p.items[n - 1].0.start];
                between.split_once(',').map_or("", |(_, after)| after)
            } else {
                &text[p.open..p.items[0].0.start]
            };
            (p.items[n - 1].0.end, format!(",{sep}{entry}"))
        }
    };
    let mut out = String::with_capacity(text.len() + insert.len());
    out.push_str(&text[..at]);
    out.push_str(&insert);
    out.push_str(&text[at..]);
    out
}

/// Makes `entry` the one and last `palisade-cni` plugin of the conflist
/// `text`. Returns the new text, or `None` if it is already so (then nothing
/// needs writing). Every other byte of the document is kept.
pub fn chain(text: &str, entry: &Value) -> Result<Option<String>, EditError> {
    let p = plugins(text)?;
    let ours: Vec<usize> = (0..p.items.len())
        .filter(|&i| is_ours(&p.items[i].1))
        .collect();
    if ours.len() == 1 && ours[0] + 1 == p.items.len() && p.items[ours[0]].1 == *entry {
        return Ok(None);
    }
    let mut text = unchain(text)?.unwrap_or_else(|| text.to_string());
    let p = plugins(&text)?;
    let entry = serde_json::to_string(entry).map_err(EditError::Json)?;
    text = append(&text, &p, &entry);
    Ok(Some(text))
}

/// Removes every `palisade-cni` plugin from the conflist `text`. Returns the
/// new text, or `None` if there was none. On a text [`chain`] produced from a
/// conflist without our entry, this gives that conflist back byte for byte.
pub fn unchain(text: &str) -> Result<Option<String>, EditError> {
    let mut text = text.to_string();
    let mut changed = false;
    loop {
        let p = plugins(&text)?;
        let Some(index) = (0..p.items.len()).rev().find(|&i| is_ours(&p.items[i].1)) else {
            return Ok(changed.then_some(text));
        };
        text = remove(&text, &p, index);
        changed = true;
    }
}
