// Command simulator plays a fleet of API gateways against keytrail: it generates the traffic
// of package simulate in real time and publishes it to NATS JetStream with package publisher.
// It never creates streams (keytrail does), and waits for them if keytrail is not up yet.
//
//	simulator [flags]   run until interrupted or --duration passes (see -h)
//
// Guarantee: it never creates or changes keytrail's streams; every event goes through package
// publisher, with its event id as the message id, so a retried publish is stored once; the
// story's notable keys and services are fixed for each -seed, and its log prints them with
// their times.
package main
