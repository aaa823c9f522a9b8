//! The cluster's routes, host by host, kept up to date object by object.
//!
//! Each watched object's last valid routes are kept here ([`Entry`]). A
//! change to an object marks the hosts its routes were and are on; only
//! those hosts are sorted and checked for conflicts again, and every other
//! host keeps the allocation it had, so the publisher (which compares by
//! allocation) rebuilds only what changed. At 20,000 objects a full
//! assembly was tens of milliseconds of every apply.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::HostRoutes;
use super::object::{Conflict, Key};
use super::translate::Ranked;
use crate::config::RouteSpec;

/// The cached outcome for one object.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub created: Option<Time>,
    /// The routes of the last valid version (kept while a newer one is bad).
    pub good: Option<Vec<Ranked>>,
    /// The Services (`namespace`, `name`) the latest version resolves.
    pub services: Vec<(String, String)>,
    /// `spec.tls` of the last valid version: hosts and the Secret.
    pub tls: Vec<(Vec<String>, String)>,
}

impl Entry {
    fn hosts(&self) -> impl Iterator<Item = &str> {
        self.good.iter().flatten().map(|r| r.table_host.as_str())
    }
}

/// Every object's entry and the routes they make, by host.
#[derive(Default)]
pub(crate) struct Assembly {
    entries: BTreeMap<Key, Entry>,
    /// The objects with routes on each host: almost always one, so a list
    /// (a set's first node alone is ten times the size of one key).
    on_host: HashMap<String, Vec<Key>>,
    hosts: imbl::OrdMap<String, HostRoutes>,
    conflicts: BTreeMap<String, Vec<Conflict>>,
    /// The namespace each host belongs to (that of its oldest object).
    owners: HashMap<String, String>,
    /// Hosts to assemble again.
    dirty: BTreeSet<String>,
    /// Some object's `spec.tls` changed since [`Assembly::take_tls_changed`].
    tls_changed: bool,
}

impl Assembly {
    pub fn get(&self, key: &Key) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.entries.iter()
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.entries.keys()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Records an object's new entry. An entry whose routes are the same as
    /// before (a label or status change, a Service change that resolves to
    /// the same endpoints) keeps the old allocations and touches no host.
    pub fn put(&mut self, key: Key, mut entry: Entry) {
        let old = self.entries.remove(&key);
        if let Some(old) = &old
            && old.good == entry.good
            && old.created == entry.created
        {
            entry.good = old.good.clone();
            self.tls_changed |= old.tls != entry.tls;
            self.entries.insert(key, entry);
            return;
        }
        self.tls_changed |= old.as_ref().map(|o| &o.tls) != Some(&entry.tls);
        self.move_hosts(&key, old.as_ref(), Some(&entry));
        self.entries.insert(key, entry);
    }

    /// Forgets an object (deleted, or no longer ours).
    pub fn remove(&mut self, key: &Key) {
        if let Some(old) = self.entries.remove(key) {
            self.tls_changed |= !old.tls.is_empty();
            self.move_hosts(key, Some(&old), None);
        }
    }

    fn move_hosts(&mut self, key: &Key, old: Option<&Entry>, new: Option<&Entry>) {
        for host in old.into_iter().flat_map(Entry::hosts) {
            if let Some(keys) = self.on_host.get_mut(host) {
                keys.retain(|k| k != key);
                if keys.is_empty() {
                    self.on_host.remove(host);
                }
            }
            self.dirty.insert(host.to_string());
        }
        for host in new.into_iter().flat_map(Entry::hosts) {
            // Almost always the only object on its host.
            let keys = self.on_host.entry(host.to_string()).or_insert_with(|| Vec::with_capacity(1));
            if !keys.contains(key) {
                keys.push(key.clone());
            }
            self.dirty.insert(host.to_string());
        }
    }

    /// Whether some object's `spec.tls` changed since the last call.
    pub fn take_tls_changed(&mut self) -> bool {
        std::mem::take(&mut self.tls_changed)
    }

    /// Assembles the hosts marked since the last call. Returns whether the
    /// routes of any host changed.
    pub fn assemble(&mut self) -> bool {
        let mut changed = false;
        for host in std::mem::take(&mut self.dirty) {
            let (routes, conflicts, owner) = self.assemble_host(&host);
            match owner {
                Some(namespace) => self.owners.insert(host.clone(), namespace),
                None => self.owners.remove(&host),
            };
            if conflicts.is_empty() {
                self.conflicts.remove(&host);
            } else {
                self.conflicts.insert(host.clone(), conflicts);
            }
            if routes.is_empty() {
                changed |= self.hosts.remove(&host).is_some();
                continue;
            }
            let same = self
                .hosts
                .get(&host)
                .is_some_and(|h| h.0.len() == routes.len() && h.0.iter().zip(&routes).all(|(a, b)| Arc::ptr_eq(a, b)));
            if !same {
                self.hosts.insert(host, HostRoutes(routes.into()));
                changed = true;
            }
        }
        changed
    }

    /// The routes by host (a cheap, structurally shared copy).
    pub fn hosts(&self) -> imbl::OrdMap<String, HostRoutes> {
        self.hosts.clone()
    }

    /// Routes that lost to an older object's, everywhere.
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.conflicts.values().flatten().cloned().collect()
    }

    /// One host's routes in match order: by host and port, then the rank
    /// of the path rule (exact, longest prefix, regex, catch-all), then the
    /// older object. A host and path rule two objects both claim goes to
    /// the older.
    fn assemble_host(&self, host: &str) -> (Vec<Arc<RouteSpec>>, Vec<Conflict>, Option<String>) {
        let mut all: Vec<(&Key, Option<&Time>, usize, &Ranked)> = Vec::new();
        for key in self.on_host.get(host).into_iter().flatten() {
            let Some(entry) = self.entries.get(key) else { continue };
            for (i, r) in entry.good.iter().flatten().enumerate() {
                if r.table_host == host {
                    all.push((key, entry.created.as_ref(), i, r));
                }
            }
        }
        all.sort_by(|a, b| {
            a.3.host
                .cmp(&b.3.host)
                .then(a.3.rank.cmp(&b.3.rank))
                .then(a.1.map(|t| t.0).cmp(&b.1.map(|t| t.0)))
                .then(a.0.cmp(b.0))
                .then(a.2.cmp(&b.2))
        });
        // A host belongs to the namespace of its oldest object: objects in
        // other namespaces cannot add paths to it, so one tenant cannot
        // take over (or carve a path out of) a host another already serves.
        // Creation times have one-second resolution: among objects created
        // in the same second the namespace that already holds the host keeps
        // it, so a newcomer cannot win a tie by its name.
        let incumbent = self.owners.get(host);
        let first = all.iter().min_by(|a, b| {
            a.1.map(|t| t.0)
                .cmp(&b.1.map(|t| t.0))
                .then_with(|| (Some(&b.0.1) == incumbent).cmp(&(Some(&a.0.1) == incumbent)))
                .then(a.0.cmp(b.0))
        });
        let owner = first.map(|f| f.0);
        let mut owners: HashMap<(&str, PathKey<'_>), &Key> = HashMap::new();
        let mut conflicts = Vec::new();
        let mut outsiders: Vec<&Key> = Vec::new();
        let mut routes = Vec::with_capacity(all.len());
        for (key, _, _, r) in all {
            if let Some(owner) = owner
                && owner.1 != key.1
            {
                if !outsiders.contains(&key) {
                    outsiders.push(key);
                    conflicts.push(Conflict {
                        loser: key.clone(),
                        holder: owner.clone(),
                        host: r.host.clone(),
                        path: None,
                    });
                }
                continue;
            }
            let rule = (r.host.as_str(), path_key(&r.spec));
            match owners.get(&rule) {
                Some(holder) if *holder != key => conflicts.push(Conflict {
                    loser: key.clone(),
                    holder: (*holder).clone(),
                    host: r.host.clone(),
                    path: Some(
                        [&r.spec.path, &r.spec.prefix, &r.spec.segment_prefix, &r.spec.regex]
                            .into_iter()
                            .find_map(|p| p.clone())
                            .unwrap_or("/".into()),
                    ),
                }),
                Some(_) => routes.push(r.spec.clone()),
                None => {
                    owners.insert(rule, key);
                    routes.push(r.spec.clone());
                }
            }
        }
        (routes, conflicts, owner.map(|o| o.1.clone()))
    }
}

/// What a route's path rule claims on its host.
type PathKey<'a> = [Option<&'a str>; 4];

fn path_key(spec: &RouteSpec) -> PathKey<'_> {
    [spec.path.as_deref(), spec.prefix.as_deref(), spec.regex.as_deref(), spec.segment_prefix.as_deref()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::object::Kind;

    fn entry(created_secs: i64, routes: &[(&str, &str)]) -> Entry {
        let time = k8s_openapi::jiff::Timestamp::from_second(created_secs).expect("time");
        Entry {
            created: Some(Time(time)),
            good: Some(
                routes
                    .iter()
                    .map(|(from, prefix)| {
                        Ranked::new(RouteSpec {
                            from: from.to_string(),
                            prefix: Some(prefix.to_string()),
                            ..Default::default()
                        })
                    })
                    .collect(),
            ),
            services: Vec::new(),
            tls: Vec::new(),
        }
    }

    fn key(namespace: &str, name: &str) -> Key {
        (Kind::Ingress, namespace.to_string(), name.to_string())
    }

    fn prefixes(assembly: &Assembly, host: &str) -> Vec<String> {
        assembly.hosts().get(host).map_or(Vec::new(), |h| h.0.iter().filter_map(|s| s.prefix.clone()).collect())
    }

    #[test]
    fn a_host_belongs_to_the_namespace_of_its_oldest_object() {
        let mut assembly = Assembly::default();
        assembly.put(key("team-a", "app"), entry(100, &[("https://app.test", "/")]));
        assembly.put(key("team-a", "api"), entry(200, &[("https://app.test", "/api")]));
        // Newer, in another namespace: a path of its own on team-a's host,
        // and a host nobody else serves.
        assembly.put(key("team-b", "grab"), entry(300, &[("https://app.test", "/admin"), ("https://b.test", "/")]));
        assert!(assembly.assemble());
        assert_eq!(prefixes(&assembly, "app.test"), ["/api", "/"], "team-b added nothing to team-a's host");
        assert_eq!(prefixes(&assembly, "b.test"), ["/"], "its own host is served");
        let conflicts = assembly.conflicts();
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0].loser, key("team-b", "grab"));
        assert_eq!(conflicts[0].holder, key("team-a", "app"));
        assert!(conflicts[0].note().contains("served from namespace team-a"), "{}", conflicts[0].note());

        // The owner leaves: the host goes to the next oldest object's namespace.
        assembly.remove(&key("team-a", "app"));
        assembly.remove(&key("team-a", "api"));
        assembly.assemble();
        assert_eq!(prefixes(&assembly, "app.test"), ["/admin"]);
        assert!(assembly.conflicts().is_empty());
    }

    #[test]
    fn in_a_tie_of_creation_times_the_namespace_holding_the_host_keeps_it() {
        let mut assembly = Assembly::default();
        // `zz` sorts after `aa`, but it was there first.
        assembly.put(key("zz", "site"), entry(100, &[("https://app.test", "/")]));
        assembly.assemble();
        assembly.put(key("aa", "grab"), entry(100, &[("https://app.test", "/admin")]));
        assembly.assemble();
        assert_eq!(prefixes(&assembly, "app.test"), ["/"]);
        assert_eq!(assembly.conflicts()[0].loser, key("aa", "grab"));
    }

    #[test]
    fn same_namespace_objects_share_a_host_and_the_older_keeps_a_path() {
        let mut assembly = Assembly::default();
        assembly.put(key("web", "old"), entry(100, &[("https://app.test", "/")]));
        assembly.put(key("web", "new"), entry(200, &[("https://app.test", "/"), ("https://app.test", "/v2")]));
        assembly.assemble();
        assert_eq!(prefixes(&assembly, "app.test"), ["/v2", "/"]);
        let conflicts = assembly.conflicts();
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!((&conflicts[0].loser, &conflicts[0].holder), (&key("web", "new"), &key("web", "old")));
        assert_eq!(conflicts[0].path.as_deref(), Some("/"));
    }
}
