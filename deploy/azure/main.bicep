// ifs-teams-notifier on Azure Container Apps (recipe A in deploy/RUNBOOK.md):
//   - database = 'postgresql' (the default): Azure Database for PostgreSQL (flexible server) and a
//     container app with two replicas sharing it: one polls IFS (the leader), both answer Teams and
//     deliver, and either takes over when the other dies;
//   - database = 'sqlite': the single-replica option, one replica with its SQLite file on an Azure Files
//     share (SMB). SQLite's locks do not work across SMB clients: never more than one replica there;
//   - the Fernet master key, and the PostgreSQL password, in Key Vault, given to the container as
//     NOTIFIER_MASTER_KEY and PGPASSWORD through a user-assigned identity (Container Apps secrets with
//     keyVaultUrl);
//   - the Azure Bot (SingleTenant app registration, or the user-assigned identity itself) with its
//     messaging endpoint https://<app>/api/messages and the Microsoft Teams channel.
//
// First deployment (the only one that passes masterKey and postgresPassword):
//   az deployment group create -g <resource group> -f deploy/azure/main.bicep \
//     -p image=<registry>/ifs-teams-notifier:0.1.0 botAppId=<application (client) id> \
//     -p masterKey="$(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')" \
//     -p postgresPassword="$(openssl rand -hex 32)"
// Later deployments: leave both out; the key and the password in Key Vault stay as they are.

targetScope = 'resourceGroup'

@description('Prefix of every resource name: 3 to 11 lowercase letters or digits.')
@minLength(3)
@maxLength(11)
param namePrefix string = 'ifsnotify'

@description('Region of everything except the Azure Bot, which is global.')
param location string = resourceGroup().location

@description('Container image built from deploy/Dockerfile, e.g. myregistry.azurecr.io/ifs-teams-notifier:0.1.0.')
param image string

@description('Login server of a private registry pulled with the user-assigned identity (grant it AcrPull); empty for a public image.')
param registryServer string = ''

@description('SingleTenant: an Entra app registration with a client secret (set as bot.app_password in the vault). UserAssignedMSI: the identity created here is the bot, no secret.')
@allowed([
  'SingleTenant'
  'UserAssignedMSI'
])
param botAppType string = 'SingleTenant'

@description('Application (client) id of the Entra app registration; required for SingleTenant, ignored for UserAssignedMSI.')
param botAppId string = ''

@description('Display name of the Azure Bot resource.')
param botDisplayName string = 'IFS Approvals'

@description('Azure Bot pricing tier; the Teams channel is a standard channel, free on F0.')
@allowed([
  'F0'
  'S1'
])
param botSku string = 'F0'

@description('Fernet master key, only on the first deployment (or to replace the key on purpose: see the runbook). Empty: keep the secret already in Key Vault.')
@secure()
param masterKey string = ''

@description('postgresql: Azure Database for PostgreSQL and two replicas (fail-over, rolling upgrades). sqlite: one replica, its database file on an Azure Files share.')
@allowed([
  'postgresql'
  'sqlite'
])
param database string = 'postgresql'

@description('Password of the PostgreSQL administrator the service connects as, only on the first deployment (it is kept in Key Vault). Empty: keep the password the server and Key Vault already have.')
@secure()
param postgresPassword string = ''

@description('PostgreSQL compute tier (Burstable B1ms is enough for one tenant\'s approvals).')
param postgresSku string = 'Standard_B1ms'

@description('More settings as environment variables, e.g. [{ name: \'NOTIFIER__IFS__REALM\', value: \'acme\' }].')
param extraEnv array = []

var suffix = uniqueString(resourceGroup().id)
var appName = '${namePrefix}-app'
var masterKeySecretName = 'notifier-master-key'
var postgresSecretName = 'notifier-postgres-password'
var onPostgres = database == 'postgresql'
// two replicas on PostgreSQL; on SQLite exactly one (one writer on the share)
var replicas = onPostgres ? 2 : 1
var postgresUser = 'notifier'
var postgresDatabase = 'notifier'
var dataShareName = 'notifier-data'
var containerPort = 3978
// /readyz and /metrics (service.ops_port, set in the image): reachable inside the environment only
var opsPort = 3979
// Key Vault Secrets User (built-in role)
var keyVaultSecretsUserRole = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '4633458b-17de-408a-b874-0445c86b69e6')

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${namePrefix}-logs'
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${namePrefix}-id'
  location: location
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: take('${namePrefix}kv${suffix}', 24)
  location: location
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
  }
}

resource masterKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(masterKey)) {
  parent: vault
  name: masterKeySecretName
  properties: {
    value: masterKey
    contentType: 'Fernet keys, comma-separated, newest first'
  }
}

resource postgresPasswordSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (onPostgres && !empty(postgresPassword)) {
  parent: vault
  name: postgresSecretName
  properties: {
    value: postgresPassword
    contentType: 'PostgreSQL password of the notifier user'
  }
}

resource identityReadsSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, identity.id, keyVaultSecretsUserRole)
  scope: vault
  properties: {
    roleDefinitionId: keyVaultSecretsUserRole
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// SQLite only: the share that holds the database file and nothing else.
resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = if (!onPostgres) {
  name: take('${namePrefix}st${suffix}', 24)
  location: location
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    supportsHttpsTrafficOnly: true
  }
}

resource fileService 'Microsoft.Storage/storageAccounts/fileServices@2023-05-01' = if (!onPostgres) {
  parent: storage
  name: 'default'
}

resource dataShare 'Microsoft.Storage/storageAccounts/fileServices/shares@2023-05-01' = if (!onPostgres) {
  parent: fileService
  name: dataShareName
  properties: {
    shareQuota: 5
  }
}

// PostgreSQL only. The firewall rule admits connections from Azure's address space (any subscription's,
// so the password and TLS carry the protection); for a private network put the server and the Container
// Apps environment in one virtual network instead. The server's own backups: 14 days, point-in-time.
resource postgres 'Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01' = if (onPostgres) {
  name: take('${namePrefix}-pg-${suffix}', 63)
  location: location
  sku: {
    name: postgresSku
    tier: startsWith(postgresSku, 'Standard_B') ? 'Burstable' : 'GeneralPurpose'
  }
  properties: union({
    version: '16'
    administratorLogin: postgresUser
    storage: {
      storageSizeGB: 32
    }
    backup: {
      backupRetentionDays: 14
      geoRedundantBackup: 'Disabled'
    }
    highAvailability: {
      mode: 'Disabled'
    }
  }, empty(postgresPassword) ? {} : {
    administratorLoginPassword: postgresPassword
  })
}

resource postgresDb 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01' = if (onPostgres) {
  parent: postgres
  name: postgresDatabase
  properties: {
    charset: 'UTF8'
    collation: 'en_US.utf8'
  }
}

resource postgresFromAzure 'Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2024-08-01' = if (onPostgres) {
  parent: postgres
  name: 'AllowAzureServices'
  properties: {
    startIpAddress: '0.0.0.0'
    endIpAddress: '0.0.0.0'
  }
}

resource containerEnv 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: '${namePrefix}-env'
  location: location
  properties: {
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: logs.properties.customerId
        sharedKey: logs.listKeys().primarySharedKey
      }
    }
  }
}

resource environmentStorage 'Microsoft.App/managedEnvironments/storages@2024-03-01' = if (!onPostgres) {
  parent: containerEnv
  name: 'notifierdata'
  properties: {
    azureFile: {
      accountName: storage.name
      accountKey: storage.listKeys().keys[0].value
      shareName: dataShare.name
      accessMode: 'ReadWrite'
    }
  }
}

var publicHost = '${appName}.${containerEnv.properties.defaultDomain}'
// no password in the URL: the container gets it as PGPASSWORD from Key Vault
var databaseUrl = onPostgres ? 'postgresql://${postgresUser}@${postgres.properties.fullyQualifiedDomainName}:5432/${postgresDatabase}?sslmode=require' : '/data/notifier.sqlite3'
var resolvedBotAppId = botAppType == 'UserAssignedMSI' ? identity.properties.clientId : botAppId

resource app 'Microsoft.App/containerApps@2024-03-01' = {
  name: appName
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  dependsOn: [
    identityReadsSecrets // the first revision must be able to read the key
    masterKeySecret
    postgresPasswordSecret
    postgresDb
    postgresFromAzure
  ]
  properties: {
    managedEnvironmentId: containerEnv.id
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: {
        external: true
        targetPort: containerPort
        transport: 'http'
        allowInsecure: false
        // The public ingress reaches only /api/messages and /healthz; monitoring in the environment (or a
        // peered network) scrapes http://<app name>:3979/metrics and /readyz.
        additionalPortMappings: [
          {
            external: false
            targetPort: opsPort
            exposedPort: opsPort
          }
        ]
      }
      secrets: concat([
        {
          name: 'master-key'
          keyVaultUrl: '${vault.properties.vaultUri}secrets/${masterKeySecretName}'
          identity: identity.id
        }
      ], onPostgres ? [
        {
          name: 'postgres-password'
          keyVaultUrl: '${vault.properties.vaultUri}secrets/${postgresSecretName}'
          identity: identity.id
        }
      ] : [])
      registries: empty(registryServer) ? [] : [
        {
          server: registryServer
          identity: identity.id
        }
      ]
    }
    template: {
      containers: [
        {
          name: 'notifier'
          image: image
          resources: {
            cpu: json('0.5')
            memory: '1Gi'
          }
          // service.host, port, ops_port and log format come from the image; each replica is named by its
          // host name (service.replica_name left at its default).
          env: concat([
            {
              name: 'NOTIFIER_MASTER_KEY'
              secretRef: 'master-key'
            }
            {
              name: 'NOTIFIER__SERVICE__DATABASE'
              value: databaseUrl
            }
            {
              name: 'NOTIFIER__SERVICE__PUBLIC_URL'
              value: 'https://${publicHost}'
            }
            {
              name: 'NOTIFIER__BOT__APP_TYPE'
              value: botAppType
            }
          ], onPostgres ? [
            {
              name: 'PGPASSWORD'
              secretRef: 'postgres-password'
            }
          ] : [], extraEnv)
          volumeMounts: onPostgres ? [] : [
            {
              volumeName: 'data'
              mountPath: '/data'
            }
          ]
          probes: [
            {
              type: 'Startup'
              httpGet: {
                path: '/healthz'
                port: containerPort
              }
              periodSeconds: 5
              failureThreshold: 24
            }
            {
              type: 'Liveness'
              httpGet: {
                path: '/healthz'
                port: containerPort
              }
              periodSeconds: 30
              failureThreshold: 3
            }
            // No readiness probe: an IFS outage fails /readyz on every replica at once, which would take the
            // bot off its ingress, and its commands (status) are how a channel learns about the outage.
            // Alert on /readyz instead.
          ]
        }
      ]
      // SIGTERM, then this long to finish the send in flight and close the database; the other replica
      // takes the scheduler over within service.leader_takeover_seconds.
      terminationGracePeriodSeconds: 30
      // PostgreSQL: two, always (fail-over, and a revision update replaces one at a time). SQLite: exactly
      // one, a single poller and a single writer on the share.
      scale: {
        minReplicas: replicas
        maxReplicas: replicas
      }
      volumes: onPostgres ? [] : [
        {
          name: 'data'
          storageType: 'AzureFile'
          storageName: environmentStorage.name
          // Owned by the image's user; nobrl keeps SQLite's locks local to the one replica (SMB byte-range
          // locks break SQLite on Azure Files).
          mountOptions: 'uid=10001,gid=10001,dir_mode=0700,file_mode=0600,nobrl,mfsymlinks'
        }
      ]
    }
  }
}

resource bot 'Microsoft.BotService/botServices@2022-09-15' = {
  name: '${namePrefix}-bot-${suffix}'
  location: 'global'
  kind: 'azurebot'
  sku: {
    name: botSku
  }
  properties: union({
    displayName: botDisplayName
    endpoint: 'https://${publicHost}/api/messages'
    msaAppId: resolvedBotAppId
    msaAppType: botAppType
    msaAppTenantId: tenant().tenantId
  }, botAppType == 'UserAssignedMSI' ? {
    msaAppMSIResourceId: identity.id
  } : {})
}

resource teamsChannel 'Microsoft.BotService/botServices/channels@2022-09-15' = {
  parent: bot
  name: 'MsTeamsChannel'
  location: 'global'
  properties: {
    channelName: 'MsTeamsChannel'
    properties: {
      isEnabled: true
    }
  }
}

@description('Base URL of the service: settings service.public_url (already set in the container).')
output publicUrl string = 'https://${publicHost}'

@description('Azure Bot messaging endpoint.')
output messagingEndpoint string = 'https://${publicHost}/api/messages'

@description('Value for `python app.py secrets set bot.app_id` and `manifest build --app-id`.')
output botAppId string = resolvedBotAppId

@description('Value for `python app.py secrets set bot.tenant_id`.')
output tenantId string = tenant().tenantId

@description('Internal address of /readyz and /metrics, for monitoring inside the Container Apps environment.')
output opsEndpoint string = 'http://${appName}:${opsPort}'

@description('Container app name, for `az containerapp exec` and `az containerapp logs show`.')
output containerAppName string = app.name

@description('Key Vault that holds the master key (secret notifier-master-key) and the PostgreSQL password (notifier-postgres-password).')
output keyVaultName string = vault.name

@description('service.database of the replicas: the PostgreSQL URL (no password), or the SQLite file on the share.')
output database string = databaseUrl

@description('Replicas the container app runs: 2 on PostgreSQL, 1 on SQLite.')
output replicaCount int = replicas
