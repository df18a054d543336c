//! Request/response tests of the fake API server with real kube-rs clients.

use std::time::Duration;

use isthmus_test_support::apiserver::{FakeApiServer, RequestAction};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::core::Status;
use serde_json::{Value, json};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn service_json(name: &str, namespace: &str, app: &str, port: i32) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {"ports": [{"port": port}]}
    })
}

fn service(name: &str, port: i32) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([("app".to_owned(), "web".to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                port,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn api_status(err: kube::Error) -> Box<Status> {
    match err {
        kube::Error::Api(status) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn port_of(svc: &Service) -> i32 {
    svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port
}

#[tokio::test]
async fn list_get_and_selectors() {
    let server = FakeApiServer::start().await;
    server.apply(service_json("b", "default", "api", 81));
    server.apply(service_json("a", "default", "web", 80));
    server.apply(service_json("c", "other", "web", 82));
    let api: Api<Service> = Api::default_namespaced(server.client());

    let list = timeout(WAIT, api.list(&ListParams::default()))
        .await
        .unwrap()
        .unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(
        list.metadata.resource_version,
        Some(server.resource_version().to_string())
    );

    let all: Api<Service> = Api::all(server.client());
    let web = all
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(web.items.len(), 2);
    let by_name = all
        .list(&ListParams::default().fields("metadata.name=c"))
        .await
        .unwrap();
    assert_eq!(
        by_name.items[0].metadata.namespace.as_deref(),
        Some("other")
    );
    let not_web = api
        .list(&ListParams::default().labels("app!=web"))
        .await
        .unwrap();
    assert_eq!(not_web.items.len(), 1);

    let a = api.get("a").await.unwrap();
    assert_eq!(port_of(&a), 80);
    assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
    assert_eq!(api_status(api.get("missing").await.unwrap_err()).code, 404);

    let list_request = server
        .requests()
        .into_iter()
        .find(|r| r.action == RequestAction::List)
        .unwrap();
    assert_eq!(list_request.path, "/api/v1/namespaces/default/services");
    assert_eq!(list_request.method, "GET");
}

#[tokio::test]
async fn server_side_apply_then_get() {
    let server = FakeApiServer::start().await;
    let api: Api<Service> = Api::default_namespaced(server.client());
    let params = PatchParams::apply("isthmus-test");

    let created = api
        .patch("reviews", &params, &Patch::Apply(service("reviews", 9080)))
        .await
        .unwrap();
    let fetched = api.get("reviews").await.unwrap();
    assert_eq!(port_of(&fetched), 9080);
    assert_eq!(
        fetched.metadata.resource_version,
        created.metadata.resource_version
    );
    let managers = fetched.metadata.managed_fields.unwrap();
    assert_eq!(managers.len(), 1);
    assert_eq!(managers[0].manager.as_deref(), Some("isthmus-test"));
    assert_eq!(managers[0].operation.as_deref(), Some("Apply"));

    let updated = api
        .patch("reviews", &params, &Patch::Apply(service("reviews", 9081)))
        .await
        .unwrap();
    assert_eq!(port_of(&updated), 9081);
    assert_eq!(updated.metadata.uid, created.metadata.uid);
    assert_eq!(updated.metadata.generation, Some(2));
    assert!(
        updated
            .metadata
            .resource_version
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > created
                .metadata
                .resource_version
                .unwrap()
                .parse::<u64>()
                .unwrap()
    );
    let stored = server
        .get("v1", "Service", Some("default"), "reviews")
        .unwrap();
    assert_eq!(stored["spec"]["ports"][0]["port"], 9081);

    let patch = server
        .requests()
        .into_iter()
        .find(|r| r.action == RequestAction::Patch)
        .unwrap();
    assert_eq!(patch.param("fieldManager").as_deref(), Some("isthmus-test"));

    // Apply without a field manager is rejected (kube-rs validates this too, so go raw).
    let request = http::Request::patch("/api/v1/namespaces/default/services/reviews")
        .header("content-type", "application/apply-patch+yaml")
        .body(serde_json::to_vec(&service("reviews", 1)).unwrap())
        .unwrap();
    let err = server.client().request::<Value>(request).await.unwrap_err();
    assert_eq!(api_status(err).code, 400);
}

#[tokio::test]
async fn create_replace_merge_patch_and_delete() {
    let server = FakeApiServer::start().await;
    let api: Api<Service> = Api::default_namespaced(server.client());
    let created = api
        .create(&PostParams::default(), &service("a", 80))
        .await
        .unwrap();
    let err = api
        .create(&PostParams::default(), &service("a", 80))
        .await
        .unwrap_err();
    assert_eq!(api_status(err).reason, "AlreadyExists");

    let mut stale = created.clone();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await
    .unwrap();
    let labels = api.get("a").await.unwrap().metadata.labels.unwrap();
    assert_eq!((labels["app"].as_str(), labels["x"].as_str()), ("web", "y"));
    stale.spec = service("a", 90).spec;
    let err = api
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(api_status(err).code, 409);
    stale.metadata.resource_version = None;
    assert_eq!(
        port_of(
            &api.replace("a", &PostParams::default(), &stale)
                .await
                .unwrap()
        ),
        90
    );

    let deleted = api.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(deleted.left().unwrap().metadata.name.as_deref(), Some("a"));
    assert_eq!(api_status(api.get("a").await.unwrap_err()).code, 404);
    assert!(server.get("v1", "Service", None, "a").is_none());
    let err = api.delete("a", &DeleteParams::default()).await.unwrap_err();
    assert_eq!(api_status(err).reason, "NotFound");
}

#[tokio::test]
async fn finalizers_delay_deletion() {
    let server = FakeApiServer::start().await;
    let mut svc = service_json("f", "default", "web", 80);
    svc["metadata"]["finalizers"] = json!(["isthmus.io/cleanup"]);
    server.apply(svc);
    let api: Api<Service> = Api::default_namespaced(server.client());
    api.delete("f", &DeleteParams::default()).await.unwrap();
    assert!(
        api.get("f")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    api.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(server.get("v1", "Service", Some("default"), "f").is_none());
}

#[tokio::test]
async fn endpoint_slices() {
    let server = FakeApiServer::start().await;
    let api: Api<EndpointSlice> = Api::default_namespaced(server.client());
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some("reviews-abc".to_owned()),
            labels: Some(
                [(
                    "kubernetes.io/service-name".to_owned(),
                    "reviews".to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".to_owned(),
        endpoints: Some(vec![Endpoint {
            addresses: vec!["10.0.0.1".to_owned()],
            ..Endpoint::default()
        }]),
        ports: None,
    };
    api.patch(
        "reviews-abc",
        &PatchParams::apply("isthmus-test"),
        &Patch::Apply(&slice),
    )
    .await
    .unwrap();
    let lp = ListParams::default().labels("kubernetes.io/service-name=reviews");
    let listed = api.list(&lp).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    let endpoints = listed.items[0].endpoints.as_ref().unwrap();
    assert_eq!(endpoints[0].addresses, ["10.0.0.1"]);
    assert_eq!(server.list("discovery.k8s.io/v1", "EndpointSlice").len(), 1);
    assert_eq!(
        server.requests().last().unwrap().path,
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    );
}

#[tokio::test]
async fn custom_kind_with_dynamic_object() {
    let server = FakeApiServer::start().await;
    server.register(
        "networking.istio.io/v1",
        "VirtualService",
        "virtualservices",
        true,
    );
    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "virtualservices");
    let api: Api<DynamicObject> = Api::namespaced_with(server.client(), "istio-apps", &resource);

    let vs = DynamicObject::new("reviews", &resource).data(json!({"spec": {"hosts": ["reviews"]}}));
    api.patch(
        "reviews",
        &PatchParams::apply("isthmus-test"),
        &Patch::Apply(&vs),
    )
    .await
    .unwrap();
    let fetched = api.get("reviews").await.unwrap();
    assert_eq!(fetched.data["spec"]["hosts"][0], "reviews");
    assert_eq!(fetched.metadata.namespace.as_deref(), Some("istio-apps"));
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    api.delete("reviews", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        server
            .list("networking.istio.io/v1", "VirtualService")
            .is_empty()
    );
}

#[tokio::test]
async fn unknown_resources_are_404_status() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let status = api_status(api.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(server.requests()[0].action, RequestAction::Other);
}

#[tokio::test]
async fn dropping_the_server_closes_it() {
    let server = FakeApiServer::start().await;
    let api: Api<Service> = Api::default_namespaced(server.client());
    api.list(&ListParams::default()).await.unwrap();
    drop(server);
    let result = timeout(WAIT, api.list(&ListParams::default()))
        .await
        .unwrap();
    assert!(result.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_work_right_after_a_restart() {
    let server = FakeApiServer::start().await;
    server.apply(service_json("a", "default", "web", 80));
    let api: Api<Service> = Api::default_namespaced(server.client());
    for _ in 0..20 {
        assert_eq!(port_of(&api.get("a").await.unwrap()), 80);
        server.restart().await;
    }
    server.stop().await;
    let err = timeout(WAIT, api.get("a")).await.unwrap().unwrap_err();
    assert!(!matches!(err, kube::Error::Api(_)), "{err:?}");
    server.start_again().await;
    assert_eq!(port_of(&api.get("a").await.unwrap()), 80);
}
