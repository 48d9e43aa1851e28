package main

import (
	goflag "flag"
	"fmt"
	"slices"
	"strconv"

	"k8s.io/apimachinery/pkg/util/validation/field"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
)

// Logging as kube-proxy sets it up: k8s.io/component-base/logs's
// configuration (--logging-format text or json, -v, --vmodule, the split
// streams), from the flags or the --config file's logging section, with
// the logging feature gates of --feature-gates. svcproxy has also always
// accepted klog's own flags (--log-file, --logtostderr, ...): only klog's
// own output honours them, so when one is given (text format only) klog
// keeps writing itself.

// loggingFields are the logging API's field paths with their flags, to name
// a flag in an error.
var loggingFields = map[string]string{
	"format":                      "logging-format",
	"flushFrequency":              "log-flush-frequency",
	"verbosity":                   "v",
	"vmodule":                     "vmodule",
	"options.text.splitStream":    "log-text-split-stream",
	"options.text.infoBufferSize": "log-text-info-buffer-size",
	"options.json.splitStream":    "log-json-split-stream",
	"options.json.infoBufferSize": "log-json-info-buffer-size",
}

// checkLogging sets o.gates from --feature-gates and checks the logging
// settings against them (set: the flags given on the command line). It
// returns the gates given that svcproxy does not have.
func (o *options) checkLogging(set map[string]bool) (unknown []string, err error) {
	o.gates = newGates()
	known := map[string]bool{}
	for name, on := range o.featureGates {
		if knownGate(name) {
			known[name] = on
		} else {
			unknown = append(unknown, name)
		}
	}
	slices.Sort(unknown)
	if err := o.gates.SetFromMap(known); err != nil {
		return nil, fmt.Errorf("%s: %s", o.at("feature-gates"), oneLine(err))
	}
	for name := range set {
		if isKlogFlag(name) {
			o.klogFlags = append(o.klogFlags, "--"+name)
		}
	}
	slices.Sort(o.klogFlags)
	if len(o.klogFlags) > 0 && o.logging.Format != logsapi.DefaultLogFormat {
		return nil, fmt.Errorf("%s: %q does not honour klog's own %v", o.at("logging-format"), o.logging.Format, o.klogFlags)
	}
	for _, e := range logsapi.Validate(&o.logging, o.gates, nil) {
		return nil, loggingError(o, e)
	}
	return unknown, nil
}

// loggingError names the flag (or field of --config) of a logging API error.
func loggingError(o *options, e *field.Error) error {
	name, ok := loggingFields[e.Field]
	if !ok {
		name = "logging-format"
	}
	return fmt.Errorf("%s: %s", o.at(name), oneLine(fmt.Errorf("%s", e.ErrorBody())))
}

// applyLogging sets logging up as checkLogging accepted it; it may run once.
func applyLogging(o *options) error {
	if len(o.klogFlags) == 0 {
		return logsapi.ValidateAndApply(&o.logging, o.gates)
	}
	kfs := goflag.NewFlagSet("klog", goflag.ContinueOnError)
	klog.InitFlags(kfs)
	if err := kfs.Set("v", strconv.FormatUint(uint64(o.logging.Verbosity), 10)); err != nil {
		return err
	}
	if err := kfs.Set("vmodule", logsapi.VModuleConfigurationPflag(&o.logging.VModule).String()); err != nil {
		return err
	}
	klog.StartFlushDaemon(o.logging.FlushFrequency.Duration.Duration)
	return nil
}
