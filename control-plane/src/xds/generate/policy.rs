//! The traffic policy that applies to one cluster (service port and subset):
//! DestinationRule top level, then its port-level settings, then the subset's
//! policy, then the subset's port-level settings — most specific wins per part.

use isthmus_api::networking::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRule, LoadBalancerSettings,
    OutlierDetection, TrafficPolicy,
};

/// The resolved policy parts for one cluster.
#[derive(Clone, Copy, Debug, Default)]
pub struct EffectivePolicy<'a> {
    pub load_balancer: Option<&'a LoadBalancerSettings>,
    pub connection_pool: Option<&'a ConnectionPoolSettings>,
    pub outlier_detection: Option<&'a OutlierDetection>,
    pub tls: Option<&'a ClientTlsSettings>,
}

impl<'a> EffectivePolicy<'a> {
    /// Resolves the policy of `dr` for `port` and `subset`.
    pub fn resolve(dr: Option<&'a DestinationRule>, port: u16, subset: Option<&str>) -> Self {
        let mut p = EffectivePolicy::default();
        let Some(dr) = dr else { return p };
        if let Some(tp) = &dr.spec.traffic_policy {
            p.layer(tp, port);
        }
        if let Some(subset) = subset
            && let Some(tp) = dr
                .spec
                .subsets
                .iter()
                .find(|s| s.name == subset)
                .and_then(|s| s.traffic_policy.as_ref())
        {
            p.layer(tp, port);
        }
        p
    }

    fn layer(&mut self, tp: &'a TrafficPolicy, port: u16) {
        self.load_balancer = tp.load_balancer.as_ref().or(self.load_balancer);
        self.connection_pool = tp.connection_pool.as_ref().or(self.connection_pool);
        self.outlier_detection = tp.outlier_detection.as_ref().or(self.outlier_detection);
        self.tls = tp.tls.as_ref().or(self.tls);
        if let Some(pl) = tp
            .port_level_settings
            .iter()
            .find(|pl| pl.port.is_some_and(|p| p.number == u32::from(port)))
        {
            self.load_balancer = pl.load_balancer.as_ref().or(self.load_balancer);
            self.connection_pool = pl.connection_pool.as_ref().or(self.connection_pool);
            self.outlier_detection = pl.outlier_detection.as_ref().or(self.outlier_detection);
            self.tls = pl.tls.as_ref().or(self.tls);
        }
    }
}
