//! What the controller's caches keep of an Ingress or a Route: the object
//! as compact JSON, beside the few metadata fields the watcher and the
//! rebuild loop read. The object is parsed back only when it is translated,
//! which happens when it (or something it uses) changes.
//!
//! Why: at 20,000 objects the cached k8s-openapi structs were the largest
//! part of the process. An Ingress kept as a struct took about 1.6 KB (a
//! map of one annotation is a 536-byte B-tree node), a Route 1.4 KB (its
//! struct is a kilobyte of optional fields before any is set); as JSON
//! either is a few hundred bytes.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::{Deserialize, Serialize};

/// One cached object of kind `K`.
pub(crate) struct Compact<K> {
    /// Name, namespace, resourceVersion and uid: what the watcher and the
    /// cache's keys read.
    meta: ObjectMeta,
    /// The whole object, less what [`slim`] drops.
    json: Box<str>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Compact<K>
where
    K: Resource + Serialize + DeserializeOwned,
{
    /// Keeps `object` compactly.
    pub(crate) fn new(mut object: K) -> Result<Self, serde_json::Error> {
        slim(&mut object);
        let json = serde_json::to_string(&object)?.into_boxed_str();
        let full = object.meta_mut();
        let meta = ObjectMeta {
            name: full.name.take(),
            namespace: full.namespace.take(),
            resource_version: full.resource_version.take(),
            uid: full.uid.take(),
            ..ObjectMeta::default()
        };
        Ok(Compact { meta, json, kind: PhantomData })
    }

    /// The object, parsed back.
    pub(crate) fn object(&self) -> Result<K, serde_json::Error> {
        serde_json::from_str(&self.json)
    }
}

/// What no cache keeps of an object: managedFields and kubectl's
/// last-applied copy are most of an object's size and never read here
/// (kube-rs's optimization guide).
pub(crate) fn slim<K: Resource>(o: &mut K) {
    let meta = o.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

impl<K> Clone for Compact<K> {
    fn clone(&self) -> Self {
        Compact { meta: self.meta.clone(), json: self.json.clone(), kind: PhantomData }
    }
}

impl<K> fmt::Debug for Compact<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compact").field("meta", &self.meta).field("json", &self.json).finish()
    }
}

/// The watcher lists and watches `Compact<K>` as it would `K`.
impl<'de, K> Deserialize<'de> for Compact<K>
where
    K: Resource + Serialize + DeserializeOwned,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Compact::new(K::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

impl<K> Resource for Compact<K>
where
    K: Resource<DynamicType = ()>,
{
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::Ingress;
    use kube::ResourceExt;

    #[test]
    fn an_object_comes_back_whole_less_what_no_one_reads() {
        let ingress: Ingress = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {
                "name": "web", "namespace": "shop", "uid": "u-1", "resourceVersion": "42", "generation": 3,
                "annotations": {
                    "postern.dev/allowed_users": "alice@example.com",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"a\":\"very long copy\"}"
                },
                "managedFields": [{ "manager": "kubectl", "operation": "Apply" }]
            },
            "spec": { "rules": [{ "host": "shop.example.com" }] }
        }))
        .expect("ingress");
        let compact: Compact<Ingress> =
            serde_json::from_str(&serde_json::to_string(&ingress).expect("json")).expect("compact");
        assert_eq!((compact.name_any(), compact.namespace()), ("web".into(), Some("shop".into())));
        assert_eq!(compact.resource_version().as_deref(), Some("42"));
        assert_eq!(compact.uid().as_deref(), Some("u-1"));
        assert!(compact.annotations().is_empty(), "the cache's own metadata keeps no annotations");

        let back = compact.object().expect("parses back");
        assert_eq!(back.name_any(), "web");
        assert_eq!(back.metadata.generation, Some(3));
        assert_eq!(back.annotations().len(), 1, "{:?}", back.annotations());
        assert_eq!(back.annotations()["postern.dev/allowed_users"], "alice@example.com");
        assert!(back.metadata.managed_fields.is_none());
        assert_eq!(back.spec, ingress.spec);
    }
}
