package edge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// grpcMachine is a real gRPC server (HTTP/2 in the clear, as apps behind
// the edge run) implementing grpc.testing.TestService.
type grpcMachine struct {
	testpb.UnimplementedTestServiceServer
	id string
	// gate holds a server stream after its first message until the test
	// has seen that message arrive.
	gate chan struct{}
}

func startGRPC(t *testing.T, id, ip string) (*machine, *grpcMachine) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	g := &grpcMachine{id: id, gate: make(chan struct{}, 16)}
	srv := grpc.NewServer()
	testpb.RegisterTestServiceServer(srv, g)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return &machine{id: id, region: "ams", ip: ip, port: ln.Addr().(*net.TCPAddr).Port}, g
}

func (g *grpcMachine) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if s := req.GetResponseStatus(); s != nil && s.Code != 0 {
		return nil, status.Error(codes.Code(s.Code), s.Message)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	return &testpb.SimpleResponse{
		ServerId: g.id,
		Username: strings.Join(md.Get("perch-region"), ","),
		Payload:  &testpb.Payload{Body: append([]byte("unary: "), req.GetPayload().GetBody()...)},
	}, nil
}

func (g *grpcMachine) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	for i, p := range req.ResponseParameters {
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, p.Size)}}); err != nil {
			return err
		}
		if i == 0 {
			select {
			case <-g.gate:
			case <-stream.Context().Done():
				return stream.Context().Err()
			}
		}
	}
	return nil
}

func (g *grpcMachine) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		body := append([]byte(g.id+" echoes "), req.GetPayload().GetBody()...)
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: body}}); err != nil {
			return err
		}
	}
}

// exerciseGRPC runs unary (with a status), server streaming and
// bidirectional streaming calls through conn and checks what the machine
// answered.
func exerciseGRPC(t *testing.T, conn *grpc.ClientConn, g *grpcMachine, wantRegion string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := testpb.NewTestServiceClient(conn)

	res, err := c.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("hi")}})
	if err != nil {
		t.Fatalf("unary: %v", err)
	}
	if res.ServerId != g.id || string(res.Payload.Body) != "unary: hi" || res.Username != wantRegion {
		t.Errorf("unary answer: server %q body %q perch-region %q; want %s, \"unary: hi\", %q", res.ServerId, res.Payload.Body, res.Username, g.id, wantRegion)
	}
	_, err = c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.FailedPrecondition), Message: "not today"}})
	if s, _ := status.FromError(err); s.Code() != codes.FailedPrecondition || s.Message() != "not today" {
		t.Errorf("unary error status: %v, want FailedPrecondition \"not today\" (trailers intact)", err)
	}

	stream, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{Size: 10}, {Size: 70000}, {Size: 3}},
	})
	if err != nil {
		t.Fatalf("server stream: %v", err)
	}
	first, err := stream.Recv()
	if err != nil || len(first.Payload.Body) != 10 {
		t.Fatalf("server stream: first message %v %v", first, err)
	}
	g.gate <- struct{}{} // the first message arrived while the server held the rest
	var sizes []int
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("server stream: %v", err)
		}
		sizes = append(sizes, len(m.Payload.Body))
	}
	if fmt.Sprint(sizes) != "[70000 3]" {
		t.Errorf("server stream sizes after the first: %v, want [70000 3]", sizes)
	}

	bidi, err := c.FullDuplexCall(ctx)
	if err != nil {
		t.Fatalf("bidi stream: %v", err)
	}
	for i := range 5 {
		msg := fmt.Sprintf("ping %d", i)
		if err := bidi.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(msg)}}); err != nil {
			t.Fatalf("bidi send: %v", err)
		}
		// Each answer arrives before the next message is sent: no
		// buffering of either direction.
		m, err := bidi.Recv()
		if err != nil || string(m.Payload.Body) != g.id+" echoes "+msg {
			t.Fatalf("bidi answer %d: %v %v", i, m, err)
		}
	}
	bidi.CloseSend()
	if _, err := bidi.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("bidi end: %v, want EOF", err)
	}
}

// gRPC through "tls" + "http" with http_options.h2_backend: the edge
// terminates TLS (ALPN h2) and speaks h2c to the app.
func TestGRPCThroughTLSAndH2CBackend(t *testing.T) {
	ca := newTestCA(t, "edge-ca", "greet.perch.local")
	w := newCertWorld(t, ca)
	port, plain := freePort(t), freePort(t)
	w.app("greet")
	m, g := startGRPC(t, "g1", "127.0.0.2")
	h2 := &api.HTTPOptions{H2Backend: true}
	w.serveOn("greet", m,
		api.Port{Port: port, Handlers: []string{"tls", "http"}, HTTPOptions: h2},
		api.Port{Port: plain, Handlers: []string{"http"}, HTTPOptions: h2})
	addr := w.listening(port)
	plainAddr := w.listening(plain)

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(ca.clientTLS("greet.perch.local"))),
		grpc.WithAuthority("greet.perch.local"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	exerciseGRPC(t, conn, g, "ams")

	// The same app without TLS: the client speaks h2c to the edge too.
	conn2, err := grpc.NewClient(plainAddr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("greet.perch.local"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	exerciseGRPC(t, conn2, g, "ams")
}

// gRPC through a raw TCP port: the edge passes HTTP/2 through unread.
func TestGRPCThroughRawTCP(t *testing.T) {
	w := newCertWorld(t, nil)
	port := freePort(t)
	w.app("greet")
	m, g := startGRPC(t, "g1", "127.0.0.2")
	w.serveOn("greet", m, tcpPort(port))
	addr := w.listening(port)

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	exerciseGRPC(t, conn, g, "") // raw TCP adds no header
}

// A gRPC stream over HTTP/2 that stays quiet longer than SendTimeout is
// not cut: HTTP/2 streams have their own flow control, and a stream's
// write deadline there would fire whether or not a write waited.
func TestQuietGRPCStreamOutlivesSendTimeout(t *testing.T) {
	w := newCertWorld(t, nil)
	w.e.limits.SendTimeout = 200 * time.Millisecond
	port := freePort(t)
	w.app("greet")
	m, g := startGRPC(t, "g1", "127.0.0.2")
	w.serveOn("greet", m, api.Port{Port: port, Handlers: []string{"http"}, HTTPOptions: &api.HTTPOptions{H2Backend: true}})
	conn, err := grpc.NewClient(w.listening(port), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("greet.perch.local"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := testpb.NewTestServiceClient(conn).StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
		ResponseParameters: []*testpb.ResponseParameters{{Size: 10}, {Size: 3}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("first message: %v", err)
	}
	time.Sleep(time.Second) // the stream is quiet for five SendTimeouts: the case tested
	g.gate <- struct{}{}
	if m, err := stream.Recv(); err != nil || len(m.Payload.Body) != 3 {
		t.Fatalf("the message after a quiet second: %v %v; want it, the stream not cut", m, err)
	}
}
