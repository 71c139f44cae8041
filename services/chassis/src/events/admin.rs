//! `tally.events.v1.ConsumerAdminService` over the consumers of one service:
//! what `tally dlq ...` and `tally replay ...` talk to.
//!
//! Mount it with one line next to the service:
//! `routes.add_service(ConsumerAdmin::new([consumer.clone()]).server());`

use crate::events::consumer::Consumer;
use std::collections::BTreeMap;
use std::sync::Arc;
use tally_api::events::v1::consumer_admin_service_server::{
    ConsumerAdminService, ConsumerAdminServiceServer,
};
use tally_api::events::v1::{
    GetDeadLetterRequest, GetDeadLetterResponse, ListConsumersRequest, ListConsumersResponse,
    ListDeadLettersRequest, ListDeadLettersResponse, RedriveDeadLetterRequest,
    RedriveDeadLetterResponse, ReplayRequest, ReplayResponse,
};
use tonic::{Request, Response, Status};

/// The admin service over a fixed set of consumers.
#[derive(Clone)]
pub struct ConsumerAdmin {
    consumers: Arc<BTreeMap<String, Consumer>>,
}

impl ConsumerAdmin {
    /// Admin over `consumers` (may be none).
    pub fn new(consumers: impl IntoIterator<Item = Consumer>) -> Self {
        Self {
            consumers: Arc::new(
                consumers
                    .into_iter()
                    .map(|c| (c.name().to_string(), c))
                    .collect(),
            ),
        }
    }

    /// The tonic service to mount.
    pub fn server(&self) -> ConsumerAdminServiceServer<ConsumerAdmin> {
        ConsumerAdminServiceServer::new(self.clone())
    }

    fn consumer(&self, name: &str) -> Result<&Consumer, Status> {
        if name.is_empty() {
            return Err(Status::invalid_argument(format!(
                "consumer is required; this service has: {}",
                self.names()
            )));
        }
        self.consumers.get(name).ok_or_else(|| {
            Status::not_found(format!(
                "no consumer `{name}` here; this service has: {}",
                self.names()
            ))
        })
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self.consumers.keys().map(String::as_str).collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }
}

#[tonic::async_trait]
impl ConsumerAdminService for ConsumerAdmin {
    async fn list_consumers(
        &self,
        _request: Request<ListConsumersRequest>,
    ) -> Result<Response<ListConsumersResponse>, Status> {
        let mut consumers = Vec::with_capacity(self.consumers.len());
        for consumer in self.consumers.values() {
            consumers.push(
                consumer
                    .status()
                    .await
                    .map_err(crate::status::consumer)?
                    .to_proto(),
            );
        }
        Ok(Response::new(ListConsumersResponse { consumers }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        let name = request.into_inner().consumer;
        let selected: Vec<&Consumer> = if name.is_empty() {
            self.consumers.values().collect()
        } else {
            vec![self.consumer(&name)?]
        };
        let mut dead_letters = Vec::new();
        for consumer in selected {
            for record in consumer
                .dead_letters()
                .await
                .map_err(crate::status::consumer)?
            {
                dead_letters.push(record.to_proto(consumer.name()));
            }
        }
        Ok(Response::new(ListDeadLettersResponse { dead_letters }))
    }

    async fn get_dead_letter(
        &self,
        request: Request<GetDeadLetterRequest>,
    ) -> Result<Response<GetDeadLetterResponse>, Status> {
        let req = request.into_inner();
        let consumer = self.consumer(&req.consumer)?;
        if req.event_id.is_empty() {
            return Err(Status::invalid_argument("event_id is required"));
        }
        let record = consumer
            .dead_letter_entry(&req.event_id)
            .await
            .map_err(crate::status::consumer)?;
        Ok(Response::new(GetDeadLetterResponse {
            dead_letter: Some(record.to_proto(consumer.name())),
        }))
    }

    async fn redrive_dead_letter(
        &self,
        request: Request<RedriveDeadLetterRequest>,
    ) -> Result<Response<RedriveDeadLetterResponse>, Status> {
        let actor = crate::audit::actor(&request);
        let req = request.into_inner();
        let target = format!("{}/{}", req.consumer, req.event_id);
        let result = async {
            let consumer = self.consumer(&req.consumer)?;
            let event_id = (!req.event_id.is_empty()).then_some(req.event_id.as_str());
            consumer
                .redrive(event_id)
                .await
                .map_err(crate::status::consumer)
        }
        .await;
        let detail = match &result {
            Ok((redriven, still)) => format!("redriven {redriven}, still failing {still}"),
            Err(s) => s.message().to_string(),
        };
        crate::audit::record(
            crate::audit::Event::new(actor, "dlq.redrive", target, crate::audit::outcome(&result))
                .with_detail(detail),
        );
        let (redriven, still_failing) = result?;
        Ok(Response::new(RedriveDeadLetterResponse {
            redriven,
            still_failing,
        }))
    }

    async fn replay(
        &self,
        request: Request<ReplayRequest>,
    ) -> Result<Response<ReplayResponse>, Status> {
        let actor = crate::audit::actor(&request);
        let req = request.into_inner();
        let result = async {
            let consumer = self.consumer(&req.consumer)?;
            consumer
                .replay(req.from_offset, req.rebuild)
                .await
                .map_err(crate::status::consumer)
        }
        .await;
        crate::audit::record(
            crate::audit::Event::new(
                actor,
                "events.replay",
                &req.consumer,
                crate::audit::outcome(&result),
            )
            .with_detail(format!(
                "from offset {}, rebuild {}",
                req.from_offset, req.rebuild
            )),
        );
        result?;
        Ok(Response::new(ReplayResponse {
            from_offset: req.from_offset,
        }))
    }
}
