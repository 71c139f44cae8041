//! The gRPC edge, `tally.billing.v1.BillingService`: authenticate the caller,
//! validate, hand over to the use cases ([`crate::app`]), map records to
//! messages; the only place a billing error becomes a `tonic::Status`.

use crate::app::{BillingError, Orchestrator};
use crate::domain::plans::{PLANS, PlanId};
use crate::domain::saga::SagaError;
use crate::domain::saga::SubscriptionState;
use crate::store::SubscriptionRecord;
use tally_api::billing::v1 as pb;
use tally_api::billing::v1::billing_service_server::BillingService;
use tally_chassis::auth::{Authenticator, Caller};
use tonic::{Request, Response, Status};

/// Scope an API key needs to change billing (access tokens hold every scope).
pub const SCOPE_BILLING_WRITE: &str = "billing:write";
/// Scope an API key needs to read billing.
pub const SCOPE_BILLING_READ: &str = "billing:read";

/// The billing service.
pub struct BillingApi {
    orchestrator: Orchestrator,
    auth: Authenticator,
}

impl BillingApi {
    pub fn new(orchestrator: Orchestrator, auth: Authenticator) -> Self {
        Self { orchestrator, auth }
    }

    async fn caller<T>(&self, req: &Request<T>, scope: &str) -> Result<Caller, Status> {
        let caller = self.auth.authenticate(req.metadata()).await?;
        caller.require(scope)?;
        Ok(caller)
    }
}

/// The status a billing error answers with.
fn status(e: BillingError) -> Status {
    let msg = e.to_string();
    match e {
        BillingError::Store(s) => tally_chassis::status::store(s),
        BillingError::NotFound(_) => Status::not_found(msg),
        BillingError::Invalid(_) => Status::invalid_argument(msg),
        BillingError::Precondition(_) => Status::failed_precondition(msg),
        BillingError::Saga(SagaError::Busy) => Status::unavailable(msg),
        BillingError::Saga(_) => Status::failed_precondition(msg),
        BillingError::Later { .. } => Status::unavailable(msg),
    }
}

fn plan_from_pb(raw: i32) -> Result<PlanId, Status> {
    match pb::PlanId::try_from(raw) {
        Ok(pb::PlanId::Free) => Ok(PlanId::Free),
        Ok(pb::PlanId::Pro) => Ok(PlanId::Pro),
        Ok(pb::PlanId::Team) => Ok(PlanId::Team),
        _ => Err(Status::invalid_argument(
            "plan_id must be PLAN_ID_FREE, PLAN_ID_PRO or PLAN_ID_TEAM",
        )),
    }
}

fn plan_to_pb(plan: PlanId) -> pb::PlanId {
    match plan {
        PlanId::Free => pb::PlanId::Free,
        PlanId::Pro => pb::PlanId::Pro,
        PlanId::Team => pb::PlanId::Team,
    }
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// The client-facing view of a subscription record.
pub fn subscription_to_pb(rec: &SubscriptionRecord) -> pb::Subscription {
    let state = match rec.saga.state() {
        SubscriptionState::Pending => pb::SubscriptionState::Pending,
        SubscriptionState::Active => pb::SubscriptionState::Active,
        SubscriptionState::Failed => pb::SubscriptionState::Failed,
        SubscriptionState::Cancelled => pb::SubscriptionState::Cancelled,
    };
    pb::Subscription {
        subscription_id: rec.subscription_id.clone(),
        user_id: rec.user_id.clone(),
        plan_id: plan_to_pb(rec.plan) as i32,
        state: state as i32,
        failure_reason: rec.saga.failure_reason.clone().unwrap_or_default(),
        steps: rec
            .steps
            .iter()
            .map(|s| pb::SagaStep {
                name: s.name.clone(),
                status: s.status.clone(),
                detail: s.detail.clone(),
                at: Some(timestamp(s.at_ms)),
            })
            .collect(),
        created_at: Some(timestamp(rec.created_at_ms)),
        saga_completed: rec.saga.is_finished(),
        charge_id: rec.saga.charge_id().unwrap_or_default().to_string(),
        idempotency_key: rec.idempotency_key.clone(),
    }
}

#[tonic::async_trait]
impl BillingService for BillingApi {
    async fn list_plans(
        &self,
        _request: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        let plans = PLANS
            .iter()
            .map(|p| pb::Plan {
                plan_id: plan_to_pb(p.id) as i32,
                name: p.name.to_string(),
                price_cents: p.price_cents,
                max_open_polls: p.max_open_polls,
                seats: p.seats,
            })
            .collect();
        Ok(Response::new(pb::ListPlansResponse { plans }))
    }

    async fn start_subscription(
        &self,
        request: Request<pb::StartSubscriptionRequest>,
    ) -> Result<Response<pb::StartSubscriptionResponse>, Status> {
        let caller = self.caller(&request, SCOPE_BILLING_WRITE).await?;
        let req = request.into_inner();
        let plan = plan_from_pb(req.plan_id)?;
        let rec = self
            .orchestrator
            .start(&caller.user_id, plan, &req.idempotency_key)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::StartSubscriptionResponse {
            subscription: Some(subscription_to_pb(&rec)),
        }))
    }

    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::GetSubscriptionResponse>, Status> {
        let caller = self.caller(&request, SCOPE_BILLING_READ).await?;
        let id = request.into_inner().subscription_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("subscription_id is empty"));
        }
        let rec = self
            .orchestrator
            .subscription(&caller.user_id, &id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetSubscriptionResponse {
            subscription: Some(subscription_to_pb(&rec)),
        }))
    }

    async fn cancel_subscription(
        &self,
        request: Request<pb::CancelSubscriptionRequest>,
    ) -> Result<Response<pb::CancelSubscriptionResponse>, Status> {
        let caller = self.caller(&request, SCOPE_BILLING_WRITE).await?;
        let id = request.into_inner().subscription_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("subscription_id is empty"));
        }
        let rec = self
            .orchestrator
            .cancel(&caller.user_id, &id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CancelSubscriptionResponse {
            subscription: Some(subscription_to_pb(&rec)),
        }))
    }

    async fn get_entitlements(
        &self,
        request: Request<pb::GetEntitlementsRequest>,
    ) -> Result<Response<pb::GetEntitlementsResponse>, Status> {
        let caller = self.caller(&request, SCOPE_BILLING_READ).await?;
        let ent = self
            .orchestrator
            .entitlement(&caller.user_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GetEntitlementsResponse {
            plan_id: plan_to_pb(ent.plan) as i32,
            max_open_polls: ent.max_open_polls,
        }))
    }
}
