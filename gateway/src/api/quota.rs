//! Per-tenant publish quotas (a token bucket per tenant and gateway
//! process, from governor).
//!
//! The bucket is keyed by namespace and rebuilt when the tenant's quota
//! changes in a reload; an unchanged quota keeps its bucket (and its state)
//! across reloads.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use cellgate_rules::Tenant;

use super::ApiError;

#[derive(Debug)]
struct Bucket {
    rate: u32,
    burst: u32,
    limiter: Arc<DefaultDirectRateLimiter>,
}

/// Buckets by namespace.
#[derive(Debug, Default)]
pub struct Quotas {
    /// RwLock: every publish reads it, only a quota change writes it.
    buckets: RwLock<HashMap<Box<str>, Bucket>>,
}

impl Quotas {
    /// Takes `n` messages from the tenant's bucket, or says when to retry.
    pub fn take(&self, tenant: &Tenant, n: u32) -> Result<(), ApiError> {
        let Some(rate) = tenant.quotas.publish_rate.and_then(NonZeroU32::new) else {
            return Ok(());
        };
        let burst = tenant
            .quotas
            .publish_burst
            .and_then(NonZeroU32::new)
            .unwrap_or(rate);
        let limiter = self.limiter(&tenant.namespace, rate, burst);
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        match limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(ApiError::rate_limited(
                not_until.wait_time_from(DefaultClock::default().now()),
            )),
            // More than the burst at once can never pass: say so plainly.
            Err(_) => Err(ApiError::new(
                http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("a batch of {n} is larger than the tenant's publish burst of {burst}"),
            )
            .field("messages")
            .retry(Duration::from_secs(1))),
        }
    }

    fn limiter(
        &self,
        ns: &str,
        rate: NonZeroU32,
        burst: NonZeroU32,
    ) -> Arc<DefaultDirectRateLimiter> {
        let fits = |b: &Bucket| b.rate == rate.get() && b.burst == burst.get();
        if let Ok(map) = self.buckets.read() {
            if let Some(b) = map.get(ns).filter(|b| fits(b)) {
                return b.limiter.clone();
            }
        }
        let mut map = self.buckets.write().unwrap_or_else(|p| p.into_inner());
        match map.get(ns).filter(|b| fits(b)) {
            // Another request built it meanwhile.
            Some(b) => b.limiter.clone(),
            None => {
                let limiter = Arc::new(RateLimiter::direct(
                    Quota::per_second(rate).allow_burst(burst),
                ));
                let bucket = Bucket {
                    rate: rate.get(),
                    burst: burst.get(),
                    limiter: limiter.clone(),
                };
                map.insert(ns.into(), bucket);
                limiter
            }
        }
    }
}
