package harness

import (
	"reflect"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestParseReplies(t *testing.T) {
	got := parseReplies("a 10.244.1.13:40000\nERR refused\nERR dial tcp: boom\n\nweird\n")
	want := []Reply{
		{Line: "a 10.244.1.13:40000", Backend: "a", Source: "10.244.1.13:40000"},
		{Line: "ERR refused", Err: "refused"},
		{Line: "ERR dial tcp: boom", Err: "dial tcp: boom"},
		{Line: "weird", Err: `unparsable reply "weird"`},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("parseReplies:\n got %+v\nwant %+v", got, want)
	}
	if ip := got[0].SourceIP(); ip != "10.244.1.13" {
		t.Errorf("SourceIP = %q", ip)
	}
	if tally := FormatTally(Tally(got)); tally != "ERR dial tcp: boom=1 ERR refused=1 ERR unparsable reply \"weird\"=1 a=1" {
		t.Errorf("FormatTally = %q", tally)
	}
}

func TestServiceDNATs(t *testing.T) {
	// iptables-save's form and iptables-restore input (--dry-run) form.
	nat := `-A KUBE-SEP-AAA -p tcp -m comment --comment "ns/web:tcp" -m tcp -j DNAT --to-destination 10.244.1.11:8080
-A KUBE-SEP-BBB -m comment --comment "ns/web:tcp" -m tcp -p tcp -j DNAT --to-destination 10.244.1.10:8080
-A KUBE-SEP-CCC -p udp -m comment --comment "ns/web:udp" -m udp -j DNAT --to-destination 10.244.1.12:8080
-A KUBE-SEP-DDD -p tcp -m comment --comment "ns/webby:tcp" -m tcp -j DNAT --to-destination 10.244.1.13:8080
-A KUBE-SEP-EEE -p tcp -m comment --comment ns/web:tcp -m tcp -j DNAT --to-destination 10.244.1.14:8080
-A KUBE-SVC-XXX -m comment --comment "ns/web:tcp -> 10.244.1.11:8080" -j KUBE-SEP-AAA
`
	got := ServiceDNATs(nat, "ns", "web", "tcp")
	want := []string{"10.244.1.10:8080", "10.244.1.11:8080", "10.244.1.14:8080"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ServiceDNATs = %v, want %v", got, want)
	}
	if got := ServiceDNATs(nat, "ns", "other", "tcp"); len(got) != 0 {
		t.Errorf("ServiceDNATs of another Service = %v", got)
	}
}

func TestMetricValue(t *testing.T) {
	body := `# HELP kubeproxy_sync_proxy_rules_duration_seconds x
kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.001"} 1
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} 7
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv6"} 3
kubeproxy_sync_proxy_rules_duration_seconds_count_other 100
`
	if v, ok := MetricValue(body, "kubeproxy_sync_proxy_rules_duration_seconds_count"); !ok || v != 10 {
		t.Errorf("MetricValue = %v, %v; want 10, true", v, ok)
	}
	if _, ok := MetricValue(body, "kubeproxy_network_programming_duration_seconds_count"); ok {
		t.Errorf("MetricValue found a missing metric")
	}
}

func TestNewService(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ports []Port
		want  []v1.ServicePort
	}{
		{"no ports: TCP", nil, []v1.ServicePort{{Name: "tcp", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(EchoPort)}}},
		{"protocol and target port default", []Port{{Name: "web", Port: 8000}},
			[]v1.ServicePort{{Name: "web", Protocol: v1.ProtocolTCP, Port: 8000, TargetPort: intstr.FromInt32(EchoPort)}}},
		{"given as is", []Port{UDP, {Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: 5353}}, []v1.ServicePort{
			{Name: "udp", Protocol: v1.ProtocolUDP, Port: 80, TargetPort: intstr.FromInt32(EchoPort)},
			{Name: "dns", Protocol: v1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(5353)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := NewService("ns", "web", tc.ports...)
			if svc.Namespace != "ns" || svc.Name != "web" || svc.Spec.Type != v1.ServiceTypeClusterIP || svc.Spec.Selector != nil {
				t.Errorf("NewService = %+v", svc.ObjectMeta)
			}
			if !reflect.DeepEqual(svc.Spec.Ports, tc.want) {
				t.Errorf("ports:\n got %+v\nwant %+v", svc.Spec.Ports, tc.want)
			}
		})
	}
}
