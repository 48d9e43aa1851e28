package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// writeConfigFile is --write-config-to: the configuration the flags (or
// --config) give, written as a KubeProxyConfiguration with every field
// spelt out, as kube-proxy writes it. --config reads it back to the same
// settings, except servers turned off (the file cannot say "off": an empty
// address there is the default, as in kube-proxy) and svcproxy's own flags.
func writeConfigFile(o *options) error {
	b, err := yaml.Marshal(kubeProxyConfiguration(o))
	if err != nil {
		return err
	}
	if err := os.WriteFile(o.writeConfigTo, b, 0o644); err != nil {
		return fmt.Errorf("--write-config-to: %w", err)
	}
	klog.InfoS("Wrote configuration", "file", o.writeConfigTo)
	return nil
}

// kubeProxyConfiguration is o as a KubeProxyConfiguration.
func kubeProxyConfiguration(o *options) *v1alpha1.KubeProxyConfiguration {
	dur := func(d time.Duration) metav1.Duration { return metav1.Duration{Duration: d} }
	c := &v1alpha1.KubeProxyConfiguration{
		TypeMeta:         metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "KubeProxyConfiguration"},
		FeatureGates:     o.featureGates,
		HostnameOverride: strings.ToLower(strings.TrimSpace(o.hostnameOverride)),
		BindAddress:      orDefault(o.bindAddressFlag, "0.0.0.0"),

		HealthzBindAddress: o.healthzAddr,
		MetricsBindAddress: o.metricsAddr,
		EnableProfiling:    o.profiling,
		ClusterCIDR:        joinPrefixes(o.clusterCIDRs),
		Mode:               v1alpha1.ProxyMode(o.proxyMode),
		DetectLocalMode:    v1alpha1.LocalMode(o.detectLocalMode),
		ConfigSyncPeriod:   dur(o.configSyncPeriod),
		OOMScoreAdj:        ptr.To(o.oomScoreAdj),
		Logging:            o.logging,
	}
	c.ClientConnection.Kubeconfig = o.kubeconfig
	c.ClientConnection.ContentType = o.kubeAPI.contentType
	c.ClientConnection.QPS = o.kubeAPI.qps
	c.ClientConnection.Burst = o.kubeAPI.burst
	if o.kubeAPI.accept != clientAccept {
		c.ClientConnection.AcceptContentTypes = o.kubeAPI.accept
	}
	c.IPTables.LocalhostNodePorts = ptr.To(o.localhostNodePorts)
	c.IPTables.MasqueradeBit = ptr.To(int32(o.masqueradeBit))
	c.NFTables.MasqueradeBit = ptr.To(int32(o.masqueradeBit))
	if o.proxyMode == "nftables" {
		c.NFTables.MasqueradeAll, c.NFTables.SyncPeriod, c.NFTables.MinSyncPeriod = o.masqueradeAll, dur(o.syncPeriod), dur(o.minSyncPeriod)
	} else {
		c.IPTables.MasqueradeAll, c.IPTables.SyncPeriod, c.IPTables.MinSyncPeriod = o.masqueradeAll, dur(o.syncPeriod), dur(o.minSyncPeriod)
	}
	c.DetectLocal.BridgeInterface = o.bridgeInterface
	c.DetectLocal.InterfaceNamePrefix = o.interfacePrefix
	if o.nodePortPrimary {
		c.NodePortAddresses = append(c.NodePortAddresses, "primary")
	}
	for _, p := range o.nodePortAddresses {
		c.NodePortAddresses = append(c.NodePortAddresses, p.String())
	}
	ct := o.conntrack
	c.Conntrack = v1alpha1.KubeProxyConntrackConfiguration{
		MaxPerCore: ptr.To(ct.maxPerCore), Min: ptr.To(ct.min),
		TCPEstablishedTimeout: ptr.To(dur(ct.tcpEstablished)), TCPCloseWaitTimeout: ptr.To(dur(ct.tcpCloseWait)),
		TCPBeLiberal: ct.tcpBeLiberal, UDPTimeout: dur(ct.udpTimeout), UDPStreamTimeout: dur(ct.udpStreamTimeout),
	}
	return c
}

// joinPrefixes is ps as comma-separated text.
func joinPrefixes[P fmt.Stringer](ps []P) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
