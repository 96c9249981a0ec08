export { ConfigError, DEFAULT_CONFIG, loadConfig, type ServerConfig } from './config.js';
export { DeviceHub, type DeviceStateChange, type LiveDevice } from './devices/hub.js';
export { type RunServerOptions, runServer } from './run.js';
export { type RunningServer, startServer, VERSION } from './server.js';
export { BucketError, BucketStore, type BucketStoreOptions } from './storage/buckets.js';
export { type Db, openDatabase } from './storage/database.js';
