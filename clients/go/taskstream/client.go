// Package taskstream is a Go client for taskstream: the generated TaskService
// and WorkerService clients (connect-go, speaking gRPC) on an HTTP/2
// connection, and a StreamTasks Follower that resumes from its cursor after a
// disconnect.
//
// The generated types and clients are in
// taskstream.dev/clients/go/gen/taskstream/v1 (taskstreamv1) and its
// taskstreamv1connect package; this package only puts them together.
package taskstream

import (
	"crypto/tls"
	"net/http"
	"time"

	"connectrpc.com/connect"

	"taskstream.dev/clients/go/gen/taskstream/v1/taskstreamv1connect"
)

// Client holds taskstream's two services, on one HTTP/2 connection.
type Client struct {
	Tasks   taskstreamv1connect.TaskServiceClient
	Workers taskstreamv1connect.WorkerServiceClient
	// HTTP is the client both services use; CloseIdleConnections closes it.
	HTTP *http.Client
}

// NewClient returns a gRPC client for the server at baseURL
// ("http://127.0.0.1:7420", or https:// when the server has a certificate).
// Each Client has its own HTTP/2 connection, opened at the first call, and
// puts all its calls on it as streams; use several Clients to spread many
// streams over several connections. Options come after connect.WithGRPC(),
// so connect.WithGRPCWeb() or connect.WithProtoJSON() and others apply.
func NewClient(baseURL string, opts ...connect.ClientOption) *Client {
	httpClient := NewHTTPClient(nil)
	opts = append([]connect.ClientOption{connect.WithGRPC()}, opts...)
	return &Client{
		Tasks:   taskstreamv1connect.NewTaskServiceClient(httpClient, baseURL, opts...),
		Workers: taskstreamv1connect.NewWorkerServiceClient(httpClient, baseURL, opts...),
		HTTP:    httpClient,
	}
}

// Close closes the client's idle connection. Calls still running keep theirs
// until they end.
func (c *Client) Close() { c.HTTP.CloseIdleConnections() }

// NewHTTPClient returns an HTTP client that speaks HTTP/2 only, as gRPC
// needs: without TLS to http:// URLs (the server accepts HTTP/2 with prior
// knowledge on its one port), by ALPN to https:// ones. It pings an idle
// connection after 30 s and drops it when the ping gets no answer within 15 s,
// so a stream whose peer vanished ends (UNAVAILABLE) and can be resumed.
func NewHTTPClient(tlsConfig *tls.Config) *http.Client {
	var protocols http.Protocols
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(true)
	transport := &http.Transport{
		Protocols:       &protocols,
		TLSClientConfig: tlsConfig,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: 30 * time.Second,
			PingTimeout:     15 * time.Second,
		},
	}
	return &http.Client{Transport: transport}
}
