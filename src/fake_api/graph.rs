//! Fake Graph `GET /v1.0/security/alerts_v2` (defender-api.md §3.1): `$filter`,
//! `$orderby=lastUpdateDateTime asc|desc`, `$top` ≤ 1,000, and `@odata.nextLink` with a
//! `$skiptoken` while more results remain. Unkind modes (`FakeApi::cap_pages`, `ignore_orderby`,
//! `ignore_skip`) change what a page holds.
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;

use super::{
    bad_request, json_response, list_request, offset, param, parse_query, query_page,
    record_served, serve_faults, Api, ListBody, Order, Page, Shared,
};

const PATH: &str = "/v1.0/security/alerts_v2";
/// Filterable properties (`GR security-list-alerts_v2.md`).
const FIELDS: &[&str] = &[
    "assignedTo",
    "classification",
    "determination",
    "createdDateTime",
    "lastUpdateDateTime",
    "severity",
    "serviceSource",
    "status",
];

pub(super) async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = parse_query(raw.as_deref());
    let (tenant, record, filter, top) = match list_request(
        &shared,
        Api::Graph,
        &headers,
        PATH,
        &query,
        FIELDS,
        (100, 1000),
    )
    .await
    {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let offset = match offset(&shared, record, &query, "$skiptoken") {
        Ok(n) => n,
        Err(resp) => return resp,
    };
    let faults = serve_faults(&shared, &tenant);
    let offset = if faults.ignore_skip { 0 } else { offset };
    let top = faults.page_cap.map_or(top, |cap| top.min(cap));
    let orderby = if faults.ignore_orderby {
        None
    } else {
        param(&query, "$orderby")
    };
    let order = match orderby {
        // Without $orderby the order is the service's own; here, by id.
        None => Order::Id,
        Some("lastUpdateDateTime asc") | Some("lastUpdateDateTime") => Order::TimeAsc,
        Some("lastUpdateDateTime desc") => Order::TimeDesc,
        Some(other) => {
            return bad_request(&shared, record, &format!("Unsupported $orderby '{other}'"))
        }
    };
    let Page { alerts: page, more } =
        query_page(&shared, &tenant, Api::Graph, &filter, order, (offset, top));
    record_served(&shared, &tenant, Api::Graph, &page);
    let mut body = ListBody {
        context: "https://graph.microsoft.com/v1.0/$metadata#security/alerts_v2",
        next_link: None,
        value: page.iter().map(|(_, _, v)| &**v).collect(),
    };
    // With `ignore_skip` the link never advances: a server that repeats its nextLink.
    let next_offset = if faults.ignore_skip {
        0
    } else {
        offset.saturating_add(top)
    };
    if more {
        let mut next = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in query.iter().filter(|(k, _)| k != "$skiptoken") {
            next.append_pair(k, v);
        }
        next.append_pair("$skiptoken", &next_offset.to_string());
        body.next_link = Some(format!("{}{PATH}?{}", shared.base_url, next.finish()));
    }
    json_response(200, body)
}
