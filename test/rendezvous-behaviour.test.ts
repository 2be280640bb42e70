/** The dynamic rendezvous behaviour suite over the in-memory store and over rdzv's TCP store server. */

import { defineRendezvousBehaviourSuite, memoryCluster, tcpCluster } from "./helpers/rendezvous-suite.js";

defineRendezvousBehaviourSuite(memoryCluster, "MemoryStore");
defineRendezvousBehaviourSuite(tcpCluster, "rdzv's TCP store (one client per node)");
