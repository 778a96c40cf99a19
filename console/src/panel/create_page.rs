//! The form that creates a link. The backend checks it exactly as the API does; a refused field is
//! shown next to its input with the reason and the fix, and everything typed is kept.

use std::collections::BTreeMap;

use askama::Template;
use axum::{
    Form,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;

use super::{
    guard::SignedIn,
    links_page::ListParams,
    render,
    session::Flash,
    state::PanelState,
    views::{self, Chrome},
};
use crate::{
    api::{Peer, client_address},
    caller::Role,
    model::{Device, LinkCreate},
    problem::ApiError,
    validate,
};

/// What was typed, kept as typed.
#[derive(Debug, Default, Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub device_port: String,
    #[serde(default)]
    pub port: String,
    #[serde(default)]
    pub sources: String,
    #[serde(default)]
    pub allow_my_address: Option<String>,
    #[serde(default)]
    pub ttl: String,
    #[serde(default)]
    pub expires_at: String,
    #[serde(default)]
    pub enabled: Option<String>,
    #[serde(default)]
    pub max_connections: String,
    #[serde(default)]
    pub idle_timeout: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Template)]
#[template(path = "create.html")]
struct CreatePage {
    chrome: Option<Chrome>,
    form: CreateForm,
    /// Form field -> what is wrong and how to fix it.
    errors: BTreeMap<&'static str, String>,
    /// A refusal that names no field of the form.
    general: Option<String>,
}

impl CreatePage {
    fn err(&self, field: &str) -> Option<&str> {
        self.errors.get(field).map(String::as_str)
    }

    /// Each refused field with its label, for the summary above the form.
    fn error_list(&self) -> Vec<(&'static str, &'static str, &str)> {
        self.errors
            .iter()
            .map(|(field, reason)| (*field, label(field), reason.as_str()))
            .collect()
    }

    /// `aria-describedby` of a field: its hint, and its error when it has one.
    fn described_by(&self, field: &str) -> String {
        match self.err(field) {
            Some(_) => format!("{field}-hint {field}-error"),
            None => format!("{field}-hint"),
        }
    }
}

/// A form field's label, as the form shows it.
fn label(field: &str) -> &'static str {
    match field {
        "namespace" => "Namespace",
        "name" => "Name",
        "host" => "Device host",
        "device_port" => "Device port",
        "port" => "Public port",
        "sources" => "Allowed sources",
        "allow_my_address" => "Also allow my address",
        "ttl" => "Open for",
        "expires_at" => "Or open until",
        "max_connections" => "Connections at once",
        "idle_timeout" => "Idle timeout",
        "description" => "Description",
        _ => "A field",
    }
}

/// The form field an API field name belongs to.
fn form_field(api_field: &str) -> Option<&'static str> {
    let field = match api_field {
        "namespace" => "namespace",
        "name" => "name",
        "device" | "device.host" => "host",
        "device.port" => "device_port",
        "port" => "port",
        "allowMyAddress" => "allow_my_address",
        "ttl" => "ttl",
        "expiresAt" => "expires_at",
        "maxConnections" => "max_connections",
        "idleTimeout" => "idle_timeout",
        "description" => "description",
        other if other.starts_with("allowedSourceRanges") => "sources",
        _ => return None,
    };
    Some(field)
}

pub async fn form(
    State(state): State<PanelState>,
    signed_in: SignedIn,
    Query(params): Query<ListParams>,
) -> Response {
    if let Err(err) = signed_in.caller.require(Role::Admin, "create links") {
        return render::failure(&err);
    }
    let namespace = params.namespace();
    let flash = state.sessions.take_flash(&signed_in.session_id);
    render::page(
        StatusCode::OK,
        &CreatePage {
            chrome: Some(Chrome::new(&signed_in, &namespace, flash)),
            form: CreateForm {
                namespace,
                enabled: Some("on".to_owned()),
                ..CreateForm::default()
            },
            errors: BTreeMap::new(),
            general: None,
        },
    )
}

/// An optional whole number typed into `field`.
fn number(
    errors: &mut BTreeMap<&'static str, String>,
    field: &'static str,
    typed: &str,
) -> Option<i64> {
    let typed = typed.trim();
    if typed.is_empty() {
        return None;
    }
    match typed.parse() {
        Ok(n) => Some(n),
        Err(_) => {
            errors.insert(
                field,
                format!("{typed:?} is not a whole number; type digits only, e.g. 22"),
            );
            None
        }
    }
}

fn optional(typed: &str) -> Option<String> {
    Some(typed.trim().to_owned()).filter(|t| !t.is_empty())
}

/// The link the form describes, or the fields that are not even numbers.
fn to_link(form: &CreateForm) -> Result<LinkCreate, BTreeMap<&'static str, String>> {
    let mut errors = BTreeMap::new();
    let device_port = number(&mut errors, "device_port", &form.device_port);
    let port = number(&mut errors, "port", &form.port);
    let max_connections = number(&mut errors, "max_connections", &form.max_connections);
    if device_port.is_none() && !errors.contains_key("device_port") {
        errors.insert(
            "device_port",
            "is missing; give the TCP port the device listens on, e.g. 22".to_owned(),
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(LinkCreate {
        name: form.name.trim().to_owned(),
        device: Device {
            host: form.host.trim().to_owned(),
            port: device_port.unwrap_or_default(),
        },
        port,
        allowed_source_ranges: form
            .sources
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect(),
        allow_my_address: form.allow_my_address.is_some(),
        ttl: optional(&form.ttl),
        expires_at: optional(&form.expires_at).map(|at| views::as_utc(&at)),
        enabled: form.enabled.is_some(),
        max_connections,
        idle_timeout: optional(&form.idle_timeout),
        description: optional(&form.description),
    })
}

pub async fn create(
    State(state): State<PanelState>,
    signed_in: SignedIn,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(form): Form<CreateForm>,
) -> Response {
    if let Err(err) = signed_in.caller.require(Role::Admin, "create links") {
        return render::failure(&err);
    }
    let namespace = form.namespace.trim().to_owned();
    let refused = |form: CreateForm, errors, general| {
        render::page(
            StatusCode::UNPROCESSABLE_ENTITY,
            &CreatePage {
                chrome: Some(Chrome::new(&signed_in, &namespace, None)),
                form,
                errors,
                general,
            },
        )
    };
    let link = match validate::name("namespace", &namespace)
        .map_err(|e| BTreeMap::from([("namespace", format!("{} ({})", e.problem, e.fix))]))
        .and_then(|()| to_link(&form))
    {
        Ok(link) => link,
        Err(errors) => return refused(form, errors, None),
    };
    let mine = match (link.allow_my_address, peer) {
        (false, _) => None,
        (true, Some(peer)) => Some(client_address(
            peer.ip().to_canonical(),
            &headers,
            &state.app.trusted_proxies,
        )),
        (true, None) => {
            let errors = BTreeMap::from([(
                "allow_my_address",
                "cannot be honoured: the console does not know the connection's address; list your address under allowed sources".to_owned(),
            )]);
            return refused(form, errors, None);
        }
    };
    let created = state
        .app
        .backend
        .create(&signed_in.caller, &namespace, link, mine)
        .await;
    match created {
        Ok(link) => {
            tracing::info!(caller = %signed_in.caller.name, %namespace, link = %link.name, "link created from the panel");
            state.sessions.set_flash(
                &signed_in.session_id,
                Flash {
                    error: false,
                    text: format!("Link {} created.", link.name),
                },
            );
            Redirect::to(&views::link_href(&namespace, &link.name)).into_response()
        }
        Err(err) => {
            tracing::info!(caller = %signed_in.caller.name, %namespace, refusal = %err, "link creation refused");
            let (errors, general) = explain(&err);
            refused(form, errors, general)
        }
    }
}

/// The API's refusal placed at the form field it names, or above the form.
fn explain(err: &ApiError) -> (BTreeMap<&'static str, String>, Option<String>) {
    let problem = err.to_problem();
    let reason = match (&err, &problem.fix) {
        // A field error's detail starts with the API's field name; the form shows its own label.
        (ApiError::InvalidField(e), _) => format!("{} ({})", e.problem, e.fix),
        (_, Some(fix)) => format!("{} ({fix})", problem.detail),
        (_, None) => problem.detail.clone(),
    };
    match problem.field.as_deref().and_then(form_field) {
        Some(field) => (BTreeMap::from([(field, reason)]), None),
        None => (BTreeMap::new(), Some(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_field_names_land_on_their_form_fields() {
        assert_eq!(form_field("allowedSourceRanges[1]"), Some("sources"));
        assert_eq!(form_field("device.host"), Some("host"));
        assert_eq!(form_field("expiresAt"), Some("expires_at"));
        assert_eq!(form_field("somethingElse"), None);
    }

    #[test]
    fn a_port_that_is_not_a_number_is_named_and_the_rest_kept() {
        let form = CreateForm {
            name: "pump".into(),
            host: "10.0.0.1".into(),
            device_port: "ssh".into(),
            ..CreateForm::default()
        };
        let errors = to_link(&form).unwrap_err();
        assert!(errors["device_port"].contains("not a whole number"));
    }

    #[test]
    fn sources_may_be_typed_one_a_line_or_with_commas() {
        let form = CreateForm {
            device_port: "22".into(),
            sources: "10.0.0.0/8, 192.0.2.1/32\n2001:db8::/32".into(),
            ..CreateForm::default()
        };
        assert_eq!(
            to_link(&form).unwrap().allowed_source_ranges,
            ["10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32"]
        );
    }
}
