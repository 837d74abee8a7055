//! Route and service definitions as operators write them, before validation. The routes file (TOML) and etcd
//! (JSON) share these structs, so a field added later exists in both sources at once.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::{validate_service_name, Backend, RouteError, Service};

/// A service definition: `{"backends": [...]}` in etcd, `[services.<name>] backends = [...]` in the file.
///
/// `S` is `String`, or `toml::Spanned<String>` where the file wants line numbers in its errors.
#[derive(Debug, Deserialize)]
pub struct ServiceSpec<S = String> {
    #[serde(default = "Vec::new")]
    pub backends: Vec<S>,
    /// Fields this version does not know: accepted (forward compatibility), reported as warnings.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, IgnoredAny>,
}

/// A route value in etcd: `{"service": "acme"}`.
#[derive(Debug, Deserialize)]
pub struct RouteSpec {
    pub service: String,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, IgnoredAny>,
}

impl<S: Borrow<str>> ServiceSpec<S> {
    /// Validates the definition of service `name`. On error, also says which backend (by index) was wrong, so
    /// the file source can point at its line.
    pub fn to_service(&self, name: &str) -> Result<Service, (Option<usize>, RouteError)> {
        validate_service_name(name).map_err(|e| (None, e))?;
        let backends = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| Backend::parse(b.borrow()).map_err(|e| (Some(i), e)))
            .collect::<Result<Vec<_>, _>>()?;
        if backends.is_empty() {
            return Err((None, RouteError::NoBackends { service: name.to_string() }));
        }
        Ok(Service::new(name, backends))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_service_with_unknown_fields() {
        let spec: ServiceSpec = serde_json::from_str(r#"{"backends": ["127.0.0.1:1"], "container": "x"}"#).unwrap();
        assert_eq!(spec.unknown.keys().collect::<Vec<_>>(), ["container"]);
        assert_eq!(spec.to_service("a").unwrap().backends().len(), 1);
        assert!(serde_json::from_str::<ServiceSpec>(r#"{"backends": "127.0.0.1:1"}"#).is_err(), "wrong type");
        let spec: ServiceSpec = serde_json::from_str(r#"{"backends": ["nope"]}"#).unwrap();
        assert!(matches!(spec.to_service("a"), Err((Some(0), RouteError::BadBackend { .. }))));
        let spec: ServiceSpec = serde_json::from_str(r#"{"backends": []}"#).unwrap();
        assert!(matches!(spec.to_service("a"), Err((None, RouteError::NoBackends { .. }))));
    }
}
