"""The Envoy bootstraps of a run: the shared upstream, a proxy per scenario,
and the HTTP filters under test (meshguard's and the trivial filter's wasm,
Envoy's native rate limit, JWT and cache filters)."""

import json

from .common import AUDIENCE, ISSUER, RLS_CLUSTER, RLS_DOMAIN, RLS_TIMEOUT
from .procs import harness

# A STATIC cluster on 127.0.0.1 (`http2`: HTTP/2 to it, for gRPC services), as the e2e tests build it.
static_cluster = harness.static_cluster


def router_filter():
    return {"name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def hcm(stat_prefix, route_config, http_filters, h2=False):
    """`h2`: the listener also speaks HTTP/2 without TLS (h2c, as gRPC clients do)."""
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            **({"codec_type": "AUTO", "http2_protocol_options": {}} if h2 else {}),
            "route_config": route_config,
            "http_filters": list(http_filters) + [router_filter()],
        },
    }


def listener(port, hcm_filter):
    return {"name": "main",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [hcm_filter]}]}


UPSTREAM_BODY = "hello from the bench upstream\n"


def upstream_bootstrap(listen_port, admin_port):
    route_config = {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
        "match": {"prefix": "/bench.v1.Bench/"},
        "direct_response": {"status": 200},
        "response_headers_to_add": [
            {"header": {"key": "content-type", "value": "application/grpc"}},
            {"header": {"key": "grpc-status", "value": "0"}}],
    }, {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": UPSTREAM_BODY}},
        "response_headers_to_add": [
            {"header": {"key": "cache-control", "value": "public, max-age=600"}},
            {"header": {"key": "content-type", "value": "text/plain"}}],
    }]}]}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": [listener(listen_port, {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "up", "codec_type": "AUTO", "http2_protocol_options": {},
                "route_config": route_config, "http_filters": [router_filter()]}})]},
    }


def proxy_bootstrap(listen_port, admin_port, upstream_port, http_filters, route_extra=None, extra_clusters=(),
                    h2=False):
    """`route_extra`: more fields of the route action (e.g. `rate_limits`); `extra_clusters`: more clusters;
    `h2`: HTTP/2 on both sides (the gRPC scenarios)."""
    action = dict({"cluster": "upstream", "timeout": "5s"}, **(route_extra or {}))
    route_config = {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
        "match": {"prefix": "/"}, "route": action}]}]}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [listener(listen_port, hcm("ingress", route_config, http_filters, h2=h2))],
            "clusters": [static_cluster("upstream", upstream_port, http2=h2)] + list(extra_clusters),
        },
    }

# ------------------------------------------------------------------ HTTP filters

def wasm_filter(name, filename, root_id, config_text):
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name, "root_id": root_id, "fail_open": False,
                "vm_config": {"vm_id": name, "runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": filename}}},
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": config_text},
            },
        },
    }


def dm_filter(filename, config_text):
    """meshguard as an Envoy dynamic module (`make native`, docs/native.md)."""
    return {
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {"module": {"local": {"filename": filename}},
                                      "metrics_namespace": "wasmcustom"},
            "filter_name": "meshguard",
            "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                              "value": config_text},
        },
    }


def native_local_ratelimit(headers=False, key_header=None):
    """`headers`: also send X-RateLimit-Limit/Remaining/Reset (off by default in Envoy).
    `key_header`: one bucket per value of this request header (a descriptor without a value:
    Envoy's dynamic descriptors, at most 10000 like meshguard's default `max_rate_limit_keys`)."""
    pct = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    bucket = {"max_tokens": 1000000000, "tokens_per_fill": 1000000000, "fill_interval": "1s"}
    cfg = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "bench_rl",
        "token_bucket": bucket,
        "filter_enabled": dict(pct, runtime_key="bench_rl_enabled"),
        "filter_enforced": dict(pct, runtime_key="bench_rl_enforced"),
    }
    if headers:
        cfg["enable_x_ratelimit_headers"] = "DRAFT_VERSION_03"
    if key_header:
        cfg["rate_limits"] = [{"actions": [{"request_headers": {"header_name": key_header,
                                                                 "descriptor_key": "key"}}]}]
        cfg["descriptors"] = [{"entries": [{"key": "key"}], "token_bucket": bucket}]
        cfg["max_dynamic_descriptors"] = 10000
    return {"name": "envoy.filters.http.local_ratelimit", "typed_config": cfg}


def native_global_ratelimit():
    """Envoy's own RLS client, `envoy.filters.http.ratelimit`, on the same service as meshguard's
    global limit; the route's `rate_limits` (NATIVE_RATE_LIMITS) build the same descriptor."""
    return {"name": "envoy.filters.http.ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        "domain": RLS_DOMAIN,
        "timeout": RLS_TIMEOUT,
        "failure_mode_deny": False,
        "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": RLS_CLUSTER}},
                               "transport_api_version": "V3"},
    }}


def native_jwt_authn(jwks, cache):
    provider = {"issuer": ISSUER, "audiences": [AUDIENCE], "forward": False,
                "local_jwks": {"inline_string": json.dumps(jwks)}}
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 1024}
    return {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"bench": provider},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
    }}


def native_cache():
    return {"name": "envoy.filters.http.cache", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"},
    }}
