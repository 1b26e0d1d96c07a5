//! Fake MDE `GET /api/alerts` (defender-api.md §1.4): `$filter`, `$top` ≤ 10,000, `$skip`,
//! `$expand=evidence`. Like the real API it returns no `@odata.nextLink`, and its order is not
//! time order (here: by alert id).
//! Unkind modes (`FakeApi::cap_pages`, `ignore_skip`) change what a page holds.
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;

use super::{
    json_response, list_request, offset, param, parse_query, query_page, record_served,
    serve_faults, Api, ListBody, Order, Shared,
};

const PATH: &str = "/api/alerts";
/// Filterable properties (`DD api/get-alerts.md`).
const FIELDS: &[&str] = &[
    "alertCreationTime",
    "lastUpdateTime",
    "incidentId",
    "InvestigationId",
    "id",
    "assignedTo",
    "detectionSource",
    "lastEventTime",
    "status",
    "severity",
    "category",
];

pub(super) async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = parse_query(raw.as_deref());
    let (tenant, record, filter, top) = match list_request(
        &shared,
        Api::Mde,
        &headers,
        PATH,
        &query,
        FIELDS,
        (10_000, 10_000),
    )
    .await
    {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let skip = match offset(&shared, record, &query, "$skip") {
        Ok(n) => n,
        Err(resp) => return resp,
    };
    let expand = param(&query, "$expand") == Some("evidence");
    let faults = serve_faults(&shared, &tenant);
    let skip = if faults.ignore_skip { 0 } else { skip };
    let top = faults.page_cap.map_or(top, |cap| top.min(cap));
    let mut page = query_page(&shared, &tenant, Api::Mde, &filter, Order::Id, (skip, top)).alerts;
    record_served(&shared, &tenant, Api::Mde, &page);
    if !expand {
        for (_, _, v) in &mut page {
            let v = Arc::make_mut(v);
            if let Some(o) = v.as_object_mut() {
                o.remove("evidence");
            }
        }
    }
    json_response(
        200,
        ListBody {
            context: "https://api.security.microsoft.com/api/$metadata#Alerts",
            next_link: None,
            value: page.iter().map(|(_, _, v)| &**v).collect(),
        },
    )
}
