//! HTTP semantics of answers: conditional requests (304), single byte ranges (206/416),
//! `If-Range`, HEAD, and the headers kept from upstream.

use http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, HeaderMap,
    HeaderName, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE,
};
use http::{StatusCode, response};

/// The header that says how the cache answered (HIT, MISS, ...).
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Room for an answer's headers: those set here and the six the server adds to every answer,
/// so that the map is allocated once and not grown while they are added.
const HEADER_ROOM: usize = 16;

/// What is being served: an entry or a fill's head.
#[derive(Debug, Clone, Copy)]
pub struct Representation<'a> {
    pub status: u16,
    /// Body length, when known (a fill whose mirror sent no Content-Length does not know it).
    pub len: Option<u64>,
    pub content_type: Option<&'a str>,
    pub last_modified: Option<&'a str>,
    pub etag: Option<&'a str>,
    pub cache_control: Option<&'a str>,
}

impl<'a> Representation<'a> {
    /// A stored entry.
    pub fn of_entry(meta: &'a crate::storage::EntryMeta) -> Representation<'a> {
        Representation {
            status: meta.status,
            len: Some(meta.len),
            content_type: meta.content_type.as_deref(),
            last_modified: meta.last_modified.as_deref(),
            etag: meta.etag.as_deref(),
            cache_control: meta.cache_control.as_deref(),
        }
    }

    /// The head of a fill's response.
    pub fn of_head(head: &'a super::fill::Head) -> Representation<'a> {
        Representation {
            status: head.status,
            len: head.len,
            content_type: head.content_type.as_deref(),
            last_modified: head.last_modified.as_deref(),
            etag: head.etag.as_deref(),
            cache_control: head.cache_control.as_deref(),
        }
    }
}

/// How to answer a request for a representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// 304: the client's copy is current.
    NotModified,
    /// The whole body with the representation's status.
    Full,
    /// 206 with bytes `start..end`.
    Partial { start: u64, end: u64 },
    /// 416: the range lies outside the body.
    Unsatisfiable,
}

impl Plan {
    /// The byte range of the body this plan sends (`None`: no body).
    pub fn body_range(self, len: Option<u64>) -> Option<(u64, Option<u64>)> {
        match self {
            Plan::Full => Some((0, len)),
            Plan::Partial { start, end } => Some((start, Some(end))),
            Plan::NotModified | Plan::Unsatisfiable => None,
        }
    }
}

/// The request headers that an answer about a file depends on: the byte range with its
/// `If-Range`, and the two conditionals. An answer is given these, never the request's header
/// map, and both ways of serving keep them with [`Conditions::keep`] (hyper's through
/// [`Conditions::of`]), so an answer from the plain-HTTP driver, which keeps only these of a
/// head (and the trace context, and every header while the debug log lists them), cannot
/// differ from hyper's. A field added here and left out of `slot`'s pattern fails to build;
/// one named there and not looked up is an unused variable, which clippy refuses.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    pub range: Option<HeaderValue>,
    pub if_range: Option<HeaderValue>,
    pub if_none_match: Option<HeaderValue>,
    pub if_modified_since: Option<HeaderValue>,
}

impl Conditions {
    /// Those of a request's headers: each name once, with its first value (what
    /// [`HeaderMap::get`] gives), kept as the driver keeps the first of a repeated header.
    pub fn of(headers: &HeaderMap) -> Conditions {
        let mut conditions = Conditions::default();
        for name in headers.keys() {
            conditions.keep(name.as_str(), || headers.get(name).cloned());
        }
        conditions
    }

    /// Keeps the header `name` (in any case) with the value `value` makes, if it is one of
    /// these and the first of its name (as `HeaderMap::get` reads a repeated header). `None`
    /// when the value of a name kept is not valid (even a repeated one's); `Some(false)` when
    /// the name is not one of these, and `value` is not called.
    pub fn keep(
        &mut self,
        name: &str,
        value: impl FnOnce() -> Option<HeaderValue>,
    ) -> Option<bool> {
        match self.slot(name) {
            Some(slot) => keep_first(slot, value),
            None => Some(false),
        }
    }

    /// Where the header `name` (in any case) goes, if it is one of these. The fields are taken
    /// apart without `..`: one added to the struct and not named here fails to build, and one
    /// named here and not looked up is an unused variable.
    fn slot(&mut self, name: &str) -> Option<&mut Option<HeaderValue>> {
        let Conditions {
            range,
            if_range,
            if_none_match,
            if_modified_since,
        } = self;
        [
            (RANGE, range),
            (IF_RANGE, if_range),
            (IF_NONE_MATCH, if_none_match),
            (IF_MODIFIED_SINCE, if_modified_since),
        ]
        .into_iter()
        .find(|(known, _)| known.as_str().eq_ignore_ascii_case(name))
        .map(|(_, slot)| slot)
    }

    /// The byte range asked for, as text.
    pub fn range(&self) -> Option<&str> {
        text(&self.range)
    }

    /// The `If-Range` validator, as text.
    pub fn if_range(&self) -> Option<&str> {
        text(&self.if_range)
    }
}

/// Fills `slot` with the value `value` makes unless it holds one already (the first of a
/// repeated header counts, as `HeaderMap::get` reads it); `None` when the value is not valid,
/// even a repeated one's. `Some(true)`: the header is one of those kept.
pub fn keep_first(
    slot: &mut Option<HeaderValue>,
    value: impl FnOnce() -> Option<HeaderValue>,
) -> Option<bool> {
    let value = value()?;
    slot.get_or_insert(value);
    Some(true)
}

/// A header's value as text (`None` when it is not visible ASCII, as `HeaderValue::to_str`).
fn text(value: &Option<HeaderValue>) -> Option<&str> {
    value.as_ref().and_then(|v| v.to_str().ok())
}

/// Decides how to answer, from the request's conditions.
pub fn plan(rep: &Representation<'_>, request: &Conditions) -> Plan {
    if rep.status != 200 {
        return Plan::Full;
    }
    if not_modified(rep, request) {
        return Plan::NotModified;
    }
    let (Some(len), Some(range)) = (rep.len, request.range()) else {
        return Plan::Full;
    };
    if let Some(if_range) = request.if_range()
        && !if_range_matches(rep, if_range)
    {
        return Plan::Full;
    }
    match parse_range(range, len) {
        Some(Some((start, end))) => Plan::Partial { start, end },
        Some(None) => Plan::Unsatisfiable,
        None => Plan::Full,
    }
}

fn not_modified(rep: &Representation<'_>, request: &Conditions) -> bool {
    if let Some(inm) = text(&request.if_none_match) {
        let Some(etag) = rep.etag else { return false };
        return inm
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || weak(tag) == weak(etag));
    }
    let (Some(ims), Some(lm)) = (text(&request.if_modified_since), rep.last_modified) else {
        return false;
    };
    match (
        httpdate::parse_http_date(ims),
        httpdate::parse_http_date(lm),
    ) {
        (Ok(ims), Ok(lm)) => lm <= ims,
        _ => false,
    }
}

fn weak(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// `If-Range`: a strong ETag equal to ours, or exactly our Last-Modified date.
fn if_range_matches(rep: &Representation<'_>, if_range: &str) -> bool {
    let if_range = if_range.trim();
    if if_range.starts_with('"') || if_range.starts_with("W/") {
        return !if_range.starts_with("W/")
            && rep
                .etag
                .is_some_and(|e| !e.starts_with("W/") && e == if_range);
    }
    match (
        httpdate::parse_http_date(if_range),
        rep.last_modified.map(httpdate::parse_http_date),
    ) {
        (Ok(a), Some(Ok(b))) => a == b,
        _ => false,
    }
}

/// Parses a single `bytes=` range against a body of `len` bytes.
/// `None`: not a range we honour (malformed, several ranges): serve the whole body.
/// `Some(None)`: unsatisfiable. `Some(Some((start, end)))`: bytes `start..end`.
fn parse_range(header: &str, len: u64) -> Option<Option<(u64, u64)>> {
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let suffix: u64 = last.parse().ok()?;
        if suffix == 0 || len == 0 {
            return Some(None);
        }
        return Some(Some((len.saturating_sub(suffix), len)));
    }
    let start: u64 = first.parse().ok()?;
    let end = if last.is_empty() {
        len
    } else {
        let last: u64 = last.parse().ok()?;
        if last < start {
            return None;
        }
        last.saturating_add(1).min(len)
    };
    if start >= len {
        return Some(None);
    }
    Some(Some((start, end)))
}

/// The response head for `plan`, with the headers kept from upstream and `X-Cache`.
pub fn head(rep: &Representation<'_>, plan: Plan, cache_status: &'static str) -> response::Builder {
    let status = match plan {
        Plan::NotModified => StatusCode::NOT_MODIFIED,
        Plan::Partial { .. } => StatusCode::PARTIAL_CONTENT,
        Plan::Unsatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
        Plan::Full => StatusCode::from_u16(rep.status).unwrap_or(StatusCode::OK),
    };
    let mut b = response::Builder::new().status(status);
    // Straight into the map: the builder's `header` converts and checks each name and value
    // again.
    let Some(headers) = b.headers_mut() else {
        return b;
    };
    headers.reserve(HEADER_ROOM);
    headers.insert(X_CACHE, HeaderValue::from_static(cache_status));
    // A stored text that is not a valid header value is left out.
    let put = |headers: &mut HeaderMap, name, value: Option<&str>| {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.append(name, v);
        }
    };
    put(headers, ETAG, rep.etag);
    put(headers, LAST_MODIFIED, rep.last_modified);
    put(headers, CACHE_CONTROL, rep.cache_control);
    if rep.status == 200 {
        headers.append(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    // The stored type, else the default as a static value (nothing to copy or check).
    let content_type = |headers: &mut HeaderMap| match rep.content_type {
        Some(text) => put(headers, CONTENT_TYPE, Some(text)),
        None => {
            headers.append(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
        }
    };
    match plan {
        Plan::NotModified => {}
        Plan::Unsatisfiable => {
            let range = format!("bytes */{}", rep.len.unwrap_or(0));
            put(headers, CONTENT_RANGE, Some(&range));
            headers.append(CONTENT_LENGTH, HeaderValue::from(0u64));
        }
        Plan::Partial { start, end } => {
            content_type(headers);
            let range = format!("bytes {start}-{}/{}", end - 1, rep.len.unwrap_or(end));
            put(headers, CONTENT_RANGE, Some(&range));
            headers.append(CONTENT_LENGTH, HeaderValue::from(end - start));
        }
        Plan::Full => {
            content_type(headers);
            if let Some(len) = rep.len {
                headers.append(CONTENT_LENGTH, HeaderValue::from(len));
            }
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const LM: &str = "Tue, 01 Oct 2024 10:00:00 GMT";

    fn rep() -> Representation<'static> {
        Representation {
            status: 200,
            len: Some(1000),
            content_type: None,
            last_modified: Some(LM),
            etag: Some("\"abc\""),
            cache_control: None,
        }
    }

    /// The conditions of a request with these headers, kept as the plain-HTTP driver keeps them.
    fn req(list: &[(&'static str, &str)]) -> Conditions {
        let mut c = Conditions::default();
        for (k, v) in list {
            assert_eq!(c.keep(k, || v.parse().ok()), Some(true), "{k}");
        }
        c
    }

    #[test]
    fn the_first_of_a_repeated_condition_counts_and_other_headers_are_not_kept() {
        let mut kept = Conditions::default();
        for name in [
            "host",
            "accept",
            "cache-control",
            "traceparent",
            "rangex",
            "",
        ] {
            assert_eq!(kept.keep(name, || unreachable!()), Some(false), "{name}");
        }
        assert_eq!(kept, Conditions::default());
        let mut twice = req(&[("range", "bytes=1-2"), ("Range", "bytes=3-")]);
        assert_eq!(twice.range(), Some("bytes=1-2"));
        // An invalid value of a name kept is refused, even a repeated one's.
        assert_eq!(twice.keep("RANGE", || None), None);
        // hyper's path reads the first of repeated headers, as the driver keeps it.
        let mut headers = HeaderMap::new();
        headers.append(RANGE, HeaderValue::from_static("bytes=0-9"));
        headers.append(RANGE, HeaderValue::from_static("bytes=5-"));
        headers.insert(IF_NONE_MATCH, HeaderValue::from_static("\"x\""));
        headers.insert(ETAG, HeaderValue::from_static("\"y\""));
        let of = Conditions::of(&headers);
        assert_eq!(of.range(), Some("bytes=0-9"));
        assert_eq!(of.if_none_match, Some(HeaderValue::from_static("\"x\"")));
        assert_eq!((of.if_range, of.if_modified_since), (None, None));
    }

    #[test]
    fn content_type_is_the_stored_one_else_octets() {
        let of = |rep: &Representation<'_>, plan| {
            let response = head(rep, plan, "HIT").body(()).unwrap();
            response.headers()[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .to_string()
        };
        let partial = Plan::Partial { start: 0, end: 10 };
        assert_eq!(of(&rep(), Plan::Full), "application/octet-stream");
        assert_eq!(of(&rep(), partial), "application/octet-stream");
        let typed = Representation {
            content_type: Some("text/plain"),
            ..rep()
        };
        assert_eq!(of(&typed, Plan::Full), "text/plain");
        assert_eq!(of(&typed, partial), "text/plain");
        let bad = Representation {
            content_type: Some("bad\nvalue"),
            ..rep()
        };
        let response = head(&bad, Plan::Full, "HIT").body(()).unwrap();
        assert!(response.headers().get(CONTENT_TYPE).is_none());
    }

    #[test]
    fn ranges() {
        let r = rep();
        assert_eq!(
            plan(&r, &req(&[("range", "bytes=0-99")])),
            Plan::Partial { start: 0, end: 100 }
        );
        assert_eq!(
            plan(&r, &req(&[("range", "bytes=900-")])),
            Plan::Partial {
                start: 900,
                end: 1000
            }
        );
        assert_eq!(
            plan(&r, &req(&[("range", "bytes=-10")])),
            Plan::Partial {
                start: 990,
                end: 1000
            }
        );
        assert_eq!(
            plan(&r, &req(&[("range", "bytes=990-5000")])),
            Plan::Partial {
                start: 990,
                end: 1000
            }
        );
        assert_eq!(
            plan(&r, &req(&[("range", "bytes=1000-")])),
            Plan::Unsatisfiable
        );
        assert_eq!(plan(&r, &req(&[("range", "bytes=0-1,5-6")])), Plan::Full);
        assert_eq!(plan(&r, &req(&[("range", "items=0-1")])), Plan::Full);
        assert_eq!(plan(&r, &req(&[("range", "bytes=5-1")])), Plan::Full);
    }

    #[test]
    fn if_range() {
        let r = rep();
        assert_eq!(
            plan(&r, &req(&[("range", "bytes=0-9"), ("if-range", "\"abc\"")])),
            Plan::Partial { start: 0, end: 10 }
        );
        assert_eq!(
            plan(&r, &req(&[("range", "bytes=0-9"), ("if-range", "\"old\"")])),
            Plan::Full
        );
        assert_eq!(
            plan(&r, &req(&[("range", "bytes=0-9"), ("if-range", LM)])),
            Plan::Partial { start: 0, end: 10 }
        );
        assert_eq!(
            plan(
                &r,
                &req(&[
                    ("range", "bytes=0-9"),
                    ("if-range", "Wed, 02 Oct 2024 10:00:00 GMT")
                ])
            ),
            Plan::Full
        );
    }

    #[test]
    fn conditionals() {
        let r = rep();
        assert_eq!(
            plan(&r, &req(&[("if-none-match", "\"x\", W/\"abc\"")])),
            Plan::NotModified
        );
        assert_eq!(plan(&r, &req(&[("if-none-match", "\"x\"")])), Plan::Full);
        assert_eq!(
            plan(&r, &req(&[("if-modified-since", LM)])),
            Plan::NotModified
        );
        assert_eq!(
            plan(
                &r,
                &req(&[("if-modified-since", "Mon, 30 Sep 2024 10:00:00 GMT")])
            ),
            Plan::Full
        );
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            plan(
                &r,
                &req(&[("if-none-match", "\"x\""), ("if-modified-since", LM)])
            ),
            Plan::Full
        );
        let missing = Representation {
            status: 404,
            ..rep()
        };
        assert_eq!(
            plan(
                &missing,
                &req(&[("if-modified-since", LM), ("range", "bytes=0-1")])
            ),
            Plan::Full
        );
    }
}
